"""Samples/s that ONE loader process produces for a train.py configuration (the work of one DataLoader worker:
reading/rendering, transforms, hard-negative generators, tokenising, collation), measured in-process with
`data.num_workers=0`. Divide a GPU step's samples/s by it to size `data.num_workers`.

    python benchmarks/loader_worker.py -- model=vit_b32 experiment=hardneg
    python benchmarks/loader_worker.py --batches 10 -- model=vit_b32

`--workers N` measures the real multi-process loader instead (N workers, `--pin` for page-locked batches as on a
GPU run, `--consume-ms` of sleep per batch standing in for the training step): whether N workers out-produce a
GPU step, and how long the consumer waits per batch (median / p90 of the `next()` call).

Prints one JSON line (appended to --out).
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument(
        "--workers", type=int, default=0, help="0: one process in-process; N: the real N-worker loader"
    )
    ap.add_argument("--pin", action="store_true", help="pin_memory=True (needs CUDA)")
    ap.add_argument(
        "--consume-ms", type=float, default=0.0, help="sleep per batch (a stand-in training step)"
    )
    ap.add_argument("--tag", default="", help="free text stored with the result (code state, machine)")
    ap.add_argument("overrides", nargs="*", help="train.py overrides (after --)")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lightning_modules.training import _fill_image_size, build_datamodule

    overrides = [
        *args.overrides,
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"data.pin_memory={str(args.pin).lower()}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    spec = instantiate(cfg.model)
    _fill_image_size(cfg, spec)
    dm = build_datamodule(cfg, spec)
    dm.prepare_data()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    # warm-up: lazy caches, first render, worker start, full prefetch
    for _ in range(max(1, 2 * args.workers)):
        next(it)
    rates, waits, images, texts = [], [], 0, 0
    for _ in range(args.repeats):
        t0, n = time.perf_counter(), 0
        for _ in range(args.batches):
            tw = time.perf_counter()
            b = next(it)
            waits.append(time.perf_counter() - tw)
            n += b.num_pos
            images += b.images_XCHW.shape[0]
            texts += b.texts_YL.shape[0]
            if args.consume_ms:
                time.sleep(args.consume_ms / 1000)
        rates.append(n / (time.perf_counter() - t0))
    total = args.repeats * args.batches * args.batch_size
    result = {
        "overrides": args.overrides,
        "image_size": int(b.images_XCHW.shape[-1]),
        "workers": args.workers,
        "pin_memory": args.pin,
        "consume_ms": args.consume_ms,
        "batch_size": args.batch_size,
        ("samples_per_s" if args.workers else "samples_per_s_one_process"): round(
            statistics.median(rates), 1
        ),
        "next_ms_median": round(1000 * statistics.median(waits), 2),
        "next_ms_p90": round(1000 * sorted(waits)[int(0.9 * (len(waits) - 1))], 2),
        "images_per_sample": round(images / total, 2),
        "texts_per_sample": round(texts / total, 2),
        "rates": [round(r, 1) for r in rates],
        "cpus": os.cpu_count(),
    } | ({"tag": args.tag} if args.tag else {})
    print(json.dumps(result), flush=True)
    append_jsonl(args.out, result)


if __name__ == "__main__":
    main()
