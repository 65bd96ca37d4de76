"""Samples/s that ONE loader process produces for a train.py configuration (the work of one DataLoader worker:
reading/rendering, transforms, hard-negative generators, tokenising, collation), measured in-process with
`data.num_workers=0`. Divide a GPU step's samples/s by it to size `data.num_workers`.

    python benchmarks/loader_worker.py -- model=vit_b32 experiment=hardneg
    python benchmarks/loader_worker.py --batches 10 -- model=vit_b32

Prints one JSON line (appended to --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import append_jsonl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over --batches (median reported)")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale" / "loader_worker.jsonl"
    )
    ap.add_argument("overrides", nargs="*", help="train.py overrides (after --)")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lightning_modules.training import _fill_image_size, build_datamodule

    overrides = [*args.overrides, f"data.batch_size={args.batch_size}", "data.num_workers=0"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    spec = instantiate(cfg.model)
    _fill_image_size(cfg, spec)
    dm = build_datamodule(cfg, spec)
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)  # warm-up (lazy caches, first render)
    rates, images, texts = [], 0, 0
    for _ in range(args.repeats):
        t0, n = time.perf_counter(), 0
        for _ in range(args.batches):
            b = next(it)
            n += b.num_pos
            images += b.images_XCHW.shape[0]
            texts += b.texts_YL.shape[0]
        rates.append(n / (time.perf_counter() - t0))
    total = args.repeats * args.batches * args.batch_size
    result = {
        "overrides": args.overrides,
        "image_size": int(b.images_XCHW.shape[-1]),
        "samples_per_s_one_process": round(statistics.median(rates), 1),
        "images_per_sample": round(images / total, 2),
        "texts_per_sample": round(texts / total, 2),
        "rates": [round(r, 1) for r in rates],
    }
    print(json.dumps(result), flush=True)
    append_jsonl(args.out, result)


if __name__ == "__main__":
    main()
