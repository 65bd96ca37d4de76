"""End-to-end training throughput and loader wait of `train.py` runs (the real loader, workers, generators).

    python benchmarks/loader_throughput.py --name b32_plain -- trainer=gpu model=vit_b32 data.batch_size=256 \
        data.num_workers=14 trainer.max_steps=150
    python benchmarks/loader_throughput.py --name b32_hardneg -- experiment=hardneg trainer=gpu model=vit_b32 ...

Each run trains with validation, test and benchmarks off and the CSV logger every 5 steps; the JSON line reports
the medians of `train/samples_per_second` and `train/data_wait_fraction` (each over the steps since the previous
logged point: samples per second of that window, and the share of it spent waiting for batches) after `--skip`
steps of warm-up (worker start, cudnn autotune), and appends it to `--out`. The run's full output is kept in
`<run-dir>/<name>/output.log` (with `+trainer.profiler=simple`: Lightning's per-hook times).
Every run also carries `benchmarks/stepclock.py` (`clock_samples_per_second`, `clock_data_wait_fraction`: one
window from step `--skip` to the end, measured by this script's own code), so `--root DIR` (another checkout, e.g.
an earlier commit) is measured exactly like this one, whatever that checkout logs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import append_jsonl  # noqa: E402

FIXED = [
    "run_test=false",
    "evaluate_after=false",
    "logger=csv",
    "callbacks=none",
    "trainer.log_every_n_steps=5",
    "trainer.val_check_interval=100000",  # no validation inside the measured window
    "+trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
]


def medians(metrics_csv: Path, skip: int) -> dict[str, float]:
    cols: dict[str, list[float]] = {"train/samples_per_second": [], "train/data_wait_fraction": []}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            if int(row.get("step") or 0) < skip:
                continue
            for k, vals in cols.items():
                if row.get(k):
                    vals.append(float(row[k]))
    return {k.split("/")[1] + "_median": round(statistics.median(v), 4) for k, v in cols.items() if v} | {
        "points": len(cols["train/samples_per_second"])
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--skip", type=int, default=30, help="warm-up steps left out of the medians")
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/hardneg_loader"))
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader_throughput.jsonl")
    ap.add_argument(
        "--root", type=Path, default=ROOT, help="the checkout whose train.py runs (default: this one)"
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    run_dir = args.run_dir / args.name
    clock = run_dir / "stepclock.json"
    clock.unlink(missing_ok=True)
    clock_cb = [
        "+callbacks.stepclock._target_=stepclock.StepClock",
        f"+callbacks.stepclock.out={clock}",
        f"+callbacks.stepclock.skip={args.skip}",
    ]
    root = args.root.resolve()
    cmd = [
        sys.executable,
        str(root / "train.py"),
        *FIXED,
        *clock_cb,
        *args.overrides,
        f"hydra.run.dir={run_dir}",
    ]
    env = os.environ | {  # stepclock importable by its own name, behind the checkout's packages
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "benchmarks")) if p
        )
    }
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=root, env=env)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "output.log").write_text(p.stdout + p.stderr)  # e.g. a `+trainer.profiler=simple` report
    result: dict = {
        "name": args.name,
        "root": str(root),
        "overrides": args.overrides,
        "wall_s": round(time.perf_counter() - t0, 1),
        "log": str(run_dir / "output.log"),
    }
    if p.returncode != 0:
        result |= {"status": "failed", "log_tail": (p.stdout + p.stderr)[-2000:]}
    else:
        result |= {"status": "ok", **medians(run_dir / "csv" / "metrics.csv", args.skip)}
        if clock.is_file():
            result |= json.loads(clock.read_text())
        try:
            import torch

            result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        except Exception:  # noqa: BLE001 - informational only
            pass
    print(json.dumps(result), flush=True)
    append_jsonl(args.out, result)


if __name__ == "__main__":
    main()
