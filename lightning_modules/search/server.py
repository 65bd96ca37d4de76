"""The search web page: FastAPI + uvicorn (chosen over Gradio: a few small dependencies instead of a large UI
framework, a plain HTML page we control — and can test in a real browser with stable element ids — plus a JSON API
other tools can call).

    python -m lightning_modules.search serve --index indexes/baseline --index indexes/hardneg    # side by side

GET  /                      the page: search box, image upload, a grid of results per index (two indexes: side by
                            side, e.g. baseline vs hard negatives on the same query)
GET  /api/search?q=&k=      text -> images: {"columns": [{"name", "model", "hits": [{rank, score, id, caption,
                            url}]}]}
POST /api/search_image      multipart `file` (+ form `k`): image -> captions, same shape
GET  /image/{col}/{row}     an indexed image (only indexed items are served)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, HTMLResponse
from PIL import Image

from lightning_modules.search import load_scorer
from lightning_modules.search.index import SearchIndex

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>hardneg search</title>
<style>
body{font-family:sans-serif;margin:1.5em;color:#222}
#bar{display:flex;gap:.5em;align-items:center;flex-wrap:wrap}
#q{width:32em;padding:.45em;font-size:1em}
button{padding:.45em 1em;font-size:1em}
#error{color:#a31515;margin:.6em 0}
#results{display:flex;gap:2em;align-items:flex-start}
.column{flex:1}
.column h2{font-size:1em;margin:.8em 0 .4em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.8em}
.hit{border:1px solid #ddd;border-radius:6px;padding:.4em;font-size:.85em}
.hit img{width:100%;image-rendering:pixelated;border-radius:4px}
.score{font-weight:bold}
</style></head><body>
<h1>hardneg search</h1>
<div id="bar">
  <input id="q" placeholder="a red cube left of a blue ball" autofocus>
  <select id="k"><option>8</option><option selected>12</option><option>24</option></select>
  <button id="go">Search</button>
  <span>or an image: <input type="file" id="file" accept="image/*"></span>
</div>
<div id="error"></div>
<div id="results"></div>
<script>
const $ = id => document.getElementById(id);
function esc(s){return String(s ?? '').replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]))}
function show(data){
  $('error').textContent = '';
  $('results').innerHTML = data.columns.map(col => `<div class="column"><h2>${esc(col.name)}
    <small>(${esc(col.model)})</small></h2><div class="grid">` + col.hits.map(h => `<div class="hit"
    data-id="${esc(h.id)}"><img src="${h.url}" alt="${esc(h.id)}"><div><span class="score">#${h.rank}
    ${h.score.toFixed(3)}</span> ${esc(h.caption || h.id)}</div></div>`).join('') + '</div></div>').join('');
}
async function call(resp){
  const data = await resp.json();
  if(!resp.ok){ $('results').innerHTML=''; $('error').textContent = data.detail || resp.statusText; return; }
  show(data);
}
async function searchText(){
  const q = $('q').value;
  await call(await fetch(`/api/search?q=${encodeURIComponent(q)}&k=${$('k').value}`));
}
$('go').onclick = searchText;
$('q').addEventListener('keydown', e => { if(e.key === 'Enter') searchText(); });
$('file').onchange = async () => {
  const f = $('file').files[0]; if(!f) return;
  const body = new FormData(); body.append('file', f); body.append('k', $('k').value);
  await call(await fetch('/api/search_image', {method:'POST', body}));
};
</script></body></html>"""


def _model_label(ref: str) -> str:
    """`<run folder>/checkpoints/last.ckpt` -> `<run folder>/last.ckpt`; other references by their last part."""
    p = Path(ref)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name


def create_app(index_dirs: list[str] | str, *, model: str | None = None, device: str = "auto") -> Any:
    dirs = [index_dirs] if isinstance(index_dirs, str) else list(index_dirs)
    if not 1 <= len(dirs) <= 2:
        raise ValueError(f"serve: one index, or two for side by side; got {len(dirs)}")
    indexes = [SearchIndex.load(d) for d in dirs]
    scorers = [load_scorer(model or ix.meta["model"], device) for ix in indexes]
    names = [Path(d).name for d in dirs]
    rows = [{id(it): n for n, it in enumerate(ix.items)} for ix in indexes]  # item -> row, for image urls
    app = FastAPI(title="hardneg search")

    def column(c: int, hits: list[tuple[float, dict]]) -> dict:
        return {
            "name": names[c],
            "model": _model_label(str(indexes[c].meta["model"])),
            "hits": [
                {
                    "rank": r + 1,
                    "score": s,
                    "id": it["id"],
                    "caption": it.get("caption"),
                    "url": f"/image/{c}/{rows[c][id(it)]}",
                }
                for r, (s, it) in enumerate(hits)
            ],
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/search")
    def search(q: str = "", k: int = 12) -> dict:
        if not q.strip():
            raise HTTPException(400, "empty query: type what the image should show")
        k = max(1, min(k, 100))
        return {"columns": [column(c, ix.search_text(scorers[c], q, k=k)) for c, ix in enumerate(indexes)]}

    @app.post("/api/search_image")
    async def search_image(file: UploadFile = File(...), k: int = Form(12)) -> dict:  # noqa: B008 (FastAPI idiom)
        data = await file.read()
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            image = image.convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder error is the client's bad input
            raise HTTPException(400, f"cannot read the uploaded image '{file.filename}': {e}") from e
        k = max(1, min(k, 100))
        try:
            cols = [column(c, ix.search_image(scorers[c], image, k=k)) for c, ix in enumerate(indexes)]
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        return {"columns": cols}

    @app.get("/image/{col}/{row}")
    def image(col: int, row: int) -> FileResponse:
        if not (0 <= col < len(indexes) and 0 <= row < len(indexes[col].items)):
            raise HTTPException(404, "no such indexed image")
        path = Path(indexes[col].items[row]["image"])
        if not path.is_file():
            raise HTTPException(404, f"indexed image no longer on disk: {path.name}")
        return FileResponse(path)

    return app
