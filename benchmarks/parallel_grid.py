"""Runs a grid of independent `train.py` runs in parallel (one GPU or many CPU cores) and prints a JSON line per run.

    python benchmarks/parallel_grid.py benchmarks/grids/relations_gpu.json --out /tmp/grid --results results/ \
        --timeout 480 [--common trainer=gpu ...] [--only base_800 hn_800]

The grid file maps run names to lists of Hydra overrides. Every run writes into `<out>/<name>` (checkpoints
included); its small files (metrics.json, metrics.csv, config, log; no checkpoints, no images) are copied to
`<results>/<name>` so they can travel back from a lent machine. A run that exceeds `--timeout` seconds (from the
start of the grid) is killed and reported as `timeout`; a run that fails is reported with the tail of its log. Each
JSON line holds the run's status, wall seconds and the headline metrics (synthetic swap+replace categories, val R@1,
diagnostics), so a grid with a hard end still yields every finished run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import headline_metrics  # noqa: E402
from datamodules.world.claims import CATEGORIES  # noqa: E402

KEEP_SUFFIXES = {".json", ".csv", ".yaml", ".md", ".log", ".txt"}


def headline(metrics: dict) -> dict:
    """The numbers a grid is usually read for (`collect.headline_metrics`, under this script's JSON keys): every
    synthetic category (None when absent), their swap+replace mean, val/test R@1, diagnostics and throughput."""
    shared = headline_metrics(metrics)
    out = {c: shared.get(c) for c in CATEGORIES}
    out["swap_replace_mean"] = shared.get("swap+replace mean")
    out |= {f"{split}_r1": shared[f"{split} R@1"] for split in ("val", "test") if f"{split} R@1" in shared}
    for key in (
        "eval/synthetic/winoground/group",
        "val/txt_neg_cos/compositional/position",
        "val/txt_neg_cos/compositional/swap_objects",
        "val/img_neg_cos/compositional/position",
        "train/samples_per_second",
        "train/data_wait_fraction",
    ):
        if key in metrics:
            out[key] = metrics[key]
    return out


def copy_small(src: Path, dst: Path) -> None:
    """Copies the files of a run that are worth keeping (no checkpoints, no images) from `src` to `dst`."""
    for path in src.rglob("*"):
        if path.is_file() and path.suffix in KEEP_SUFFIXES and path.stat().st_size < 4 << 20:
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", type=Path, help="JSON file: {run name: [override, ...]}")
    ap.add_argument("--out", type=Path, required=True, help="run directories (checkpoints included)")
    ap.add_argument("--results", type=Path, default=None, help="where the small files of each run are copied")
    ap.add_argument(
        "--timeout", type=float, default=540.0, help="seconds from the grid's start; later runs are killed"
    )
    ap.add_argument("--common", nargs="*", default=[], help="overrides for every run")
    ap.add_argument("--only", nargs="*", default=None, help="run only these names")
    args = ap.parse_args()

    grid = json.loads(args.grid.read_text())
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise SystemExit(f"{args.grid}: expected a JSON object of run name -> list of overrides")
    names = list(grid) if args.only is None else args.only
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise SystemExit(f"--only: not in {args.grid}: {unknown}")

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    procs = {}
    for name in names:
        run_dir = args.out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            *args.common,
            *grid[name],
            f"hydra.run.dir={run_dir}",
            "trainer.enable_progress_bar=false",
        ]
        log = (run_dir / "train.log").open("w")
        log.write(" ".join(cmd) + "\n")
        log.flush()
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log, run_dir)

    pending = set(procs)
    ends: dict[str, tuple[str, float]] = {}
    while pending:
        time.sleep(2)
        elapsed = time.perf_counter() - start
        for name in sorted(pending):
            proc, log, run_dir = procs[name]
            rc = proc.poll()
            if rc is None and elapsed < args.timeout:
                continue
            if rc is None:
                proc.kill()
                proc.wait()
                status = "timeout"
            else:
                status = "ok" if rc == 0 else f"failed rc={rc}"
            log.close()
            pending.discard(name)
            ends[name] = (status, elapsed)
            metrics_path = run_dir / "metrics.json"
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
            line = {"run": name, "status": status, "wall_s": round(elapsed, 1), **headline(metrics)}
            if status != "ok":
                line["log_tail"] = (run_dir / "train.log").read_text()[-1500:]
            print(json.dumps(line), flush=True)
            if args.results is not None:
                copy_small(run_dir, args.results / name)
                (args.results / name / "wall_seconds.txt").write_text(f"{elapsed:.1f}\n")
    failed = [n for n, (s, _) in ends.items() if s != "ok"]
    print(json.dumps({"grid": str(args.grid), "runs": len(names), "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
