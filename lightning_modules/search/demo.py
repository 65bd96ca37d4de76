"""The embedded demo: the synthetic test split (images written once as PNGs + a manifest), indexed with the newest
default training run's checkpoint (`logs/train/runs/*/checkpoints/last.ckpt`).

    python -m lightning_modules.search demo          # then open http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from datamodules.atomic import atomic_write_text

log = logging.getLogger(__name__)


def newest_checkpoint(log_dir: str | Path = "logs") -> Path:
    ckpts = sorted(Path(log_dir).glob("train/runs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise FileNotFoundError(
            f"search demo: no trained checkpoint under '{log_dir}/train/runs/*/checkpoints/last.ckpt'; run "
            "`make train` (or `python train.py`) first"
        )
    return ckpts[-1]


def write_synthetic_split(run_cfg: dict, out: Path, split: str = "test", limit: int | None = None) -> Path:
    """The run's synthetic world's `split` as PNG files + a JSONL manifest (id, image, caption); reused if present."""
    from datamodules.sources.synthetic import SyntheticWorldSource, world_from_run_config

    manifest = out / f"{split}.jsonl"
    if manifest.is_file():
        return manifest
    world, size = world_from_run_config(run_cfg)
    source = SyntheticWorldSource(world, num_train=0, num_val=0, num_test=limit or 1000, image_size=size)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for rec in source.records(split):
        path = out / "images" / f"{rec.id}.png"
        rec.image.load().save(path)
        rows.append({"id": rec.id, "image": str(path.resolve()), "caption": rec.caption})
    atomic_write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def demo_indexes(root: str | Path = "logs/search_demo", log_dir: str | Path = "logs") -> list[str]:
    from lightning_modules.inference import load_checkpoint
    from lightning_modules.search import load_scorer
    from lightning_modules.search.index import SearchIndex

    root = Path(root)
    ckpt = newest_checkpoint(log_dir)
    index_dir = root / f"index_{ckpt.parent.parent.name}"
    if not (index_dir / "meta.json").is_file():
        _, _, run_cfg = load_checkpoint(ckpt)
        manifest = write_synthetic_split(run_cfg, root)
        SearchIndex.build(load_scorer(str(ckpt)), str(ckpt), manifest, index_dir).save()
    print(f"search demo: {index_dir} (model {ckpt})")
    return [str(index_dir)]
