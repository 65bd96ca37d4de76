"""Search (lightning_modules/search): index build + query round trip, exact = brute force, IVF recall, incremental add,
model mismatch, bad queries, the CLI, the JSON API, and the page in a real (headless) browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_modules.inference import ClipScorer
from lightning_modules.model_factory import ModelSpec
from tests.conftest import ROOT
from tests.helpers import free_port

faiss = pytest.importorskip("faiss", reason="pip install -e '.[search]'")

from lightning_modules.search.index import SearchIndex, make_faiss_index, model_fingerprint  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "white", "purple", "orange", "cyan"]


def tiny_scorer(seed: int = 0) -> ClipScorer:
    torch.manual_seed(seed)
    spec = ModelSpec(name="tiny-vit")
    return ClipScorer(spec.build().eval(), spec.image_transform(), spec.tokenizer(), batch_size=8)


@pytest.fixture
def collection(tmp_path):
    """24 generated images and a manifest captioning them."""
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(24):
        c = COLOURS[i % len(COLOURS)]
        im = Image.new("RGB", (48, 48), (20, 20, 20))
        im.paste(Image.new("RGB", (12 + i % 20, 12 + i % 20), c), (i % 30, (3 * i) % 30))
        im.save(tmp_path / "imgs" / f"{i:02d}.png")
        rows.append({"id": f"r{i}", "image": f"imgs/{i:02d}.png", "caption": f"a {c} square number {i}"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_build_query_round_trip_and_exact_equals_brute_force(collection, tmp_path):
    scorer = tiny_scorer()
    index = SearchIndex.build(scorer, "tiny-vit:", collection / "manifest.jsonl", tmp_path / "idx")
    index.save()
    loaded = SearchIndex.load(tmp_path / "idx")
    assert loaded.meta["count"] == 24 and loaded.meta["dim"] == 128 and len(loaded.text_rows) == 24
    hits = loaded.search_text(scorer, "a red square", k=5)
    # brute force over the same embeddings
    imgs = scorer.encode_images([Image.open(it["image"]) for it in loaded.items])
    ref = (imgs @ scorer.encode_texts(["a red square"]).T).squeeze(1)
    top = torch.topk(ref, 5)
    assert [it["id"] for _, it in hits] == [loaded.items[i]["id"] for i in top.indices.tolist()]
    np.testing.assert_allclose([s for s, _ in hits], top.values.numpy(), atol=1e-5)
    # image -> captions: an indexed image finds a caption; its own caption scores as brute force says
    cap_hits = loaded.search_image(scorer, collection / "imgs" / "03.png", k=3)
    assert len(cap_hits) == 3 and all(it.get("caption") for _, it in cap_hits)


def test_incremental_add_and_image_folder_collection(collection, tmp_path):
    scorer = tiny_scorer()
    index = SearchIndex.build(scorer, "tiny-vit:", collection / "imgs", tmp_path / "idx")
    assert index.meta["count"] == 24 and index.texts is None and index.items[0]["id"] == "00.png"
    with pytest.raises(ValueError, match="no captions to search"):
        index.search_image(scorer, collection / "imgs" / "00.png")
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(collection / "imgs" / "05.png", more / "extra.png")
    (more / "broken.png").write_bytes(b"not a png")
    from lightning_modules.search.index import read_collection

    assert index.add_items(scorer, read_collection(more)) == 1  # the unreadable one is skipped and counted
    assert index.meta["count"] == 25 and index.meta["skipped"] == 1 and index.images.ntotal == 25


def test_model_mismatch_and_bad_queries_get_clear_errors(collection, tmp_path):
    index = SearchIndex.build(tiny_scorer(0), "tiny-vit:", collection / "manifest.jsonl", tmp_path / "idx")
    other = tiny_scorer(1)
    assert model_fingerprint(other.model) != index.meta["fingerprint"]
    with pytest.raises(ValueError, match="was built with model 'tiny-vit:'.*not comparable"):
        index.search_text(other, "a red square")
    with pytest.raises(ValueError, match="text query is empty"):
        index.search_text(tiny_scorer(0), "   ")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="cannot read the query image .*bad.jpg"):
        index.search_image(tiny_scorer(0), bad)
    with pytest.raises(FileNotFoundError, match="collection not found"):
        SearchIndex.build(tiny_scorer(0), "tiny-vit:", tmp_path / "nope", tmp_path / "idx2")


def test_ivf_recall_at_10_against_exact_on_random_embeddings():
    """Clustered random unit vectors (20k x 64): IVF recall@10 vs the exact index, reported in the assertion."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(64, 64))
    x = centers[rng.integers(0, 64, 20000)] + 0.5 * rng.normal(size=(20000, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q = x[rng.integers(0, 20000, 200)] + 0.05 * rng.normal(size=(200, 64)).astype(np.float32)
    exact, ivf = make_faiss_index(64, "flat", 20000), make_faiss_index(64, "ivf", 20000)
    exact.add(x)
    ivf.train(x)
    ivf.add(x)
    ivf.nprobe = 16
    _, e = exact.search(q, 10)
    _, a = ivf.search(q, 10)
    recall = np.mean([len(set(e[i]) & set(a[i])) / 10 for i in range(len(q))])
    assert recall > 0.9, f"IVF recall@10 {recall:.3f}"


def _run_cli(*args, cwd):
    p = subprocess.run(
        [sys.executable, "-m", "lightning_modules.search", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    return p


def _export_model(tmp_path) -> str:
    """A tiny-vit weights file (the CLI takes <name>:<weights>)."""
    from safetensors.torch import save_file

    from lightning_modules.model_factory import open_clip_state_dict

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip_state_dict(tiny_scorer().model).items()}, str(path))
    return f"tiny-vit:{path}"


def test_cli_build_search_json_and_errors(collection, tmp_path):
    model = _export_model(tmp_path)
    p = _run_cli(
        "index",
        "build",
        model,
        str(collection / "manifest.jsonl"),
        "--out",
        str(tmp_path / "idx"),
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "index: 24 images (0 skipped), 24 captions" in p.stdout
    p = _run_cli(
        "search", "--index", str(tmp_path / "idx"), "a blue square", "-k", "3", "--json", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads(p.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["score"] >= rows[-1]["score"]
    p = _run_cli("search", "--index", str(tmp_path / "idx"), "", cwd=tmp_path)
    assert p.returncode == 2 and "text query is empty" in p.stderr


@pytest.fixture
def two_indexes(collection, tmp_path):
    """Two indexes of the same collection with two different models (side by side)."""
    model = _export_model(tmp_path)
    dirs = []
    for name in ("baseline", "hardneg"):
        d = tmp_path / name
        SearchIndex.build(tiny_scorer(), model, collection / "manifest.jsonl", d).save()
        dirs.append(str(d))
    return dirs


def test_json_api_side_by_side_and_errors(two_indexes, collection):
    from fastapi.testclient import TestClient

    from lightning_modules.search.server import create_app

    client = TestClient(create_app(two_indexes))
    r = client.get("/api/search", params={"q": "a green square", "k": 4})
    assert r.status_code == 200
    cols = r.json()["columns"]
    assert [c["name"] for c in cols] == ["baseline", "hardneg"] and all(len(c["hits"]) == 4 for c in cols)
    img = client.get(cols[0]["hits"][0]["url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert client.get("/api/search", params={"q": " "}).status_code == 400
    assert client.get("/image/0/999").status_code == 404
    up = client.post(
        "/api/search_image", files={"file": ("x.png", (collection / "imgs" / "01.png").read_bytes())}
    )
    assert up.status_code == 200 and up.json()["columns"][0]["hits"][0]["caption"]
    bad = client.post("/api/search_image", files={"file": ("x.png", b"garbage")})
    assert bad.status_code == 400 and "cannot read the uploaded image" in bad.json()["detail"]


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_page_in_a_headless_browser(two_indexes, tmp_path):
    """The server started here; headless Chromium types a query, clicks Search and finds both result grids."""
    import uvicorn
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from lightning_modules.search.server import create_app

    browser = _browser()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(two_indexes), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        browser.get(f"http://127.0.0.1:{port}/")
        browser.find_element(By.ID, "q").send_keys("a red square")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".hit img")))
        columns = browser.find_elements(By.CSS_SELECTOR, ".column")
        assert len(columns) == 2 and "baseline" in columns[0].text and "hardneg" in columns[1].text
        hits = browser.find_elements(By.CSS_SELECTOR, ".column .hit")
        assert len(hits) == 24  # k=12 per column
        assert browser.execute_script("return document.querySelector('.hit img').naturalWidth") > 0
        browser.save_screenshot(str(tmp_path / "search.png"))
        browser.find_element(By.ID, "q").clear()
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 10).until(lambda b: "empty query" in b.find_element(By.ID, "error").text)
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(10)


def test_a_query_model_changed_in_place_after_an_accepted_query_is_refused(collection, tmp_path):
    """The fingerprint is hashed once per scorer and re-hashed when a weight tensor changes in place."""
    scorer = tiny_scorer(0)
    index = SearchIndex.build(scorer, "tiny-vit:", collection / "manifest.jsonl", tmp_path / "idx")
    assert index.search_text(scorer, "a red square", k=1)
    with torch.no_grad():
        next(scorer.model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="not comparable"):
        index.search_text(scorer, "a red square")
