"""Captions for new images (seed paper §6.2), optionally with look-again reflection, as a JSONL file.

    python -m lightning_modules.reflection.caption <input> [key=value ...]
    python -m lightning_modules.reflection.caption world:test:300 captioner.path=logs/captioner/sft reflect=true
    python -m lightning_modules.reflection.caption /data/photos captioner=vlm captioner.model=/models/Qwen2.5-VL-3B-Instruct \\
        reflect=true reflector=vlm reflector.model=/models/Qwen2.5-VL-3B-Instruct output=/data/photos.captions.jsonl

`<input>`: a folder of images (png/jpg/jpeg/webp/bmp, sorted, recursive), a JSONL manifest (one object per line
with `image`, a path relative to the manifest, and optionally `id`), or `world:<split>:<n>` (scenes of the synthetic
world: every caption is checked against its scene graph, so the output carries `truth` and the summary a truth
rate). The config is `conf/caption.yaml` (groups `captioner=tiny|vlm|symbolic`, `reflector=symbolic|vlm`).

Each output line: `id`, `image`, `caption` (final), and with `reflect=true` `initial` (before looking again) and
`trace` (each round's questions, answers and revision). Unreadable images and captioner failures are counted and
listed in the summary (printed as JSON and written next to the output as `<output>.summary.json`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from datamodules.atomic import atomic_write_text
from datamodules.records import Record

log = logging.getLogger(__name__)
CONF = Path(__file__).resolve().parents[2] / "conf"
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def read_input(spec: str, image_size: int, skipped: Counter) -> list[tuple[Record, Image.Image]]:
    """(record, decoded image) pairs of a folder, a JSONL manifest or `world:<split>:<n>`."""
    if spec.startswith("world:"):
        parts = spec.split(":")
        if len(parts) != 3 or parts[1] not in ("train", "val", "test") or not parts[2].isdigit():
            raise ValueError(f"input: '{spec}' — expected world:<train|val|test>:<n>, e.g. world:test:300")
        from datamodules.sources.synthetic import SyntheticWorldSource
        from datamodules.world import World

        split, n = parts[1], int(parts[2])
        sizes = {f"num_{s}": (n if s == split else 0) for s in ("train", "val", "test")}
        src = SyntheticWorldSource(World(seed=0), image_size=image_size, **sizes)
        return [(r, r.image.load()) for r in src.records(split)]
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        rows = [(str(f.relative_to(path)), f) for f in files]
    elif path.is_file():
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                raise ValueError(f"{path}:{i}: each line needs an 'image' path (string)")
            img = Path(obj["image"])
            rows.append((str(obj.get("id", obj["image"])), img if img.is_absolute() else path.parent / img))
    else:
        raise FileNotFoundError(f"input: '{spec}' is neither a folder, a file nor world:<split>:<n>")
    out, seen = [], set()
    for rid, f in rows:
        if rid in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(rid)
        try:
            with Image.open(f) as im:
                image = im.convert("RGB")
        except FileNotFoundError:
            skipped["image_missing"] += 1
            log.warning("caption: %s: image missing (%s)", rid, f)
            continue
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped["image_unreadable"] += 1
            log.warning("caption: %s: image unreadable (%s)", rid, f)
            continue
        out.append((Record(rid, str(f), None, "lone_image"), image))
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    skipped: Counter = Counter()
    items = read_input(str(cfg.input), cfg.image_size, skipped)
    captioner = instantiate(cfg.captioner)
    reflector = instantiate(cfg.reflector) if cfg.reflect else None
    world_input = str(cfg.input).startswith("world:")
    if world_input:
        from datamodules.world import World
        from lightning_modules.reflection.look_again import truth

        world = World(seed=0)
    failed = Counter()
    lines, t0 = [], time.perf_counter()
    bs = cfg.batch_size
    for s in range(0, len(items), bs):
        chunk = items[s : s + bs]
        recs, ims = [r for r, _ in chunk], [im for _, im in chunk]
        seeds = [cfg.seed + s + i for i in range(len(chunk))]
        caps = captioner.caption(ims, recs, seeds)
        ok = []
        for r, im, c, seed in zip(recs, ims, caps, seeds):
            c = " ".join(c.split()) if isinstance(c, str) else ""
            if not c:
                failed["caption_failed"] += 1
                continue
            r.caption = c
            ok.append((r, im, seed))
        results: list[Any] = [None] * len(ok)
        if reflector is not None and ok:
            results = reflector.reflect([im for _, im, _ in ok], [r for r, _, _ in ok], [x for *_, x in ok])
        for (r, _, _), res in zip(ok, results):
            line: dict[str, Any] = {"id": r.id, "image": None if world_input else str(r.image)}
            if reflector is not None:
                if not isinstance(res, dict) or not res.get("caption"):
                    failed["reflect_failed"] += 1  # the caption is kept as it was, without a revision
                    res = {"caption": r.caption, "trace": []}
                line |= {"caption": res["caption"], "initial": r.caption, "trace": res.get("trace", [])}
            else:
                line["caption"] = r.caption
            if world_input:
                scene = r.image.scene
                line["truth"] = truth(line["caption"], scene, world)
                if reflector is not None:
                    line["initial_truth"] = truth(line["initial"], scene, world)
            lines.append(line)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    summary: dict[str, Any] = {
        "input": str(cfg.input),
        "output": str(out),
        "images": len(items) + sum(skipped.values()),
        "captioned": len(lines),
        "skipped": dict(skipped),
        "failed": dict(failed),
        "reflect": bool(cfg.reflect),
        "seconds": round(time.perf_counter() - t0, 1),
        "captioner": captioner.identity(),
    }
    if reflector is not None:
        summary["revised"] = sum(x["caption"] != x["initial"] for x in lines)
        summary["reflector"] = reflector.identity()
    if world_input and lines:
        summary["truth_rate"] = round(100 * sum(x["truth"] for x in lines) / len(lines), 2)
        if reflector is not None:
            summary["initial_truth_rate"] = round(
                100 * sum(x["initial_truth"] for x in lines) / len(lines), 2
            )
    atomic_write_text(Path(str(out) + ".summary.json"), json.dumps(summary, indent=2, default=str))
    return summary


def load_config(argv: list[str]) -> DictConfig:
    """`<input> key=value ...` (or `input=<input> key=value ...`) -> the composed `conf/caption.yaml`."""
    overrides = [a if "=" in a else f"input={a}" for a in argv]
    if sum(not a.startswith(("input=", "+input=")) and "=" not in a for a in argv) > 1:
        raise ValueError(f"caption: one input, got {[a for a in argv if '=' not in a]}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("caption", overrides=overrides)
    if OmegaConf.is_missing(cfg, "input"):
        raise ValueError("caption: no input (a folder, a JSONL manifest or world:<split>:<n>)")
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return {}
    summary = run(load_config(argv))
    print(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
