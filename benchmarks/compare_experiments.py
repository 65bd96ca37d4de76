"""Runs experiments × seeds at equal training steps and tabulates the synthetic benchmark (mean ± std over seeds).

    python benchmarks/compare_experiments.py --experiments clip_baseline all --seeds 0 1 2
    python benchmarks/compare_experiments.py --summarize-only          # re-tabulate finished runs

Each run is `train.py experiment=<e> seed=<s>` in its own directory `<out>/<e>/seed<s>`; finished runs (with a
metrics.json) are skipped, so the script resumes. Writes `<out>/summary.md` and `<out>/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import fmt  # noqa: E402
from datamodules.world.claims import CATEGORIES  # noqa: E402

COLUMNS = list(CATEGORIES)  # the synthetic benchmark's categories
SWAP_REPLACE = [c for c in COLUMNS if c.startswith(("replace_", "swap_"))]


def train_run(run_dir: Path, overrides: list[str], log_path: Path) -> float | None:
    """`train.py <overrides>` into `run_dir` (log to `log_path`, wall seconds to `wall_seconds.txt`); a run that
    already has a metrics.json is skipped (None), so the scripts resume."""
    if (run_dir / "metrics.json").is_file():
        return None
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *overrides,
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t0
    (run_dir / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    return wall


def load_runs(group_dir: Path) -> list[dict]:
    """metrics.json of every finished `seed*` run below `group_dir`, with its wall time under `_wall`."""
    return [
        json.loads((d / "metrics.json").read_text()) | {"_wall": float((d / "wall_seconds.txt").read_text())}
        for d in sorted(group_dir.glob("seed*"))
        if (d / "metrics.json").is_file()
    ]


def write_summary(out: Path, head: list[str], rows: list[str], data: dict) -> str:
    """The markdown table (`head` column names, `rows` already formatted) to summary.md, `data` to summary.json."""
    table = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "\n".join(rows)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(data, indent=2))
    return table


def run(exp: str, seed: int, out: Path, extra: list[str]) -> None:
    wall = train_run(
        out / exp / f"seed{seed}",
        [f"experiment={exp}", f"seed={seed}", *extra],
        out / f"{exp}-seed{seed}.log",
    )
    if wall is not None:
        print(f"done {exp} seed {seed} in {wall:.0f}s", flush=True)


def summarize(out: Path) -> str:
    rows, data = [], {}
    for exp_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        runs = load_runs(exp_dir)
        if not runs:
            continue
        col = lambda key, runs=runs: [r[key] for r in runs if key in r]  # noqa: E731
        sr = [statistics.mean(r[f"eval/synthetic/{c}/acc"] for c in SWAP_REPLACE) for r in runs]
        sr_held = [statistics.mean(r[f"eval/synthetic/{c}-heldout/acc"] for c in SWAP_REPLACE) for r in runs]
        r1 = [(r["val/i2t_r1"] + r["val/t2i_r1"]) / 2 for r in runs]
        entry = {
            "seeds": len(runs),
            "swap_replace_mean": sr,
            "swap_replace_heldout_mean": sr_held,
            "val_r1_mean": r1,
            **{c: col(f"eval/synthetic/{c}/acc") for c in COLUMNS},
            "winoground_group": col("eval/synthetic/winoground/group"),
            "wall_seconds": col("_wall"),
        }
        data[exp_dir.name] = entry
        rows.append(
            f"| {exp_dir.name} | {len(runs)} | **{fmt(sr)}** | {fmt(sr_held)} | "
            + " | ".join(fmt(entry[c]) for c in COLUMNS)
            + f" | {fmt(entry['winoground_group'])} | {fmt(r1)} | {fmt([w / 60 for w in entry['wall_seconds']])} |"
        )
    head = [
        "experiment",
        "seeds",
        "swap+replace mean",
        "(held-out)",
        *COLUMNS,
        "wino group",
        "val R@1",
        "min/run",
    ]
    return write_summary(out, head, rows, data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--experiments",
        nargs="+",
        default=[
            "clip_baseline",
            "negclip_text",
            "structure",
            "compositional_text",
            "compositional_full",
            "all",
        ],
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "experiments")
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        for seed in args.seeds:
            for exp in args.experiments:
                run(exp, seed, args.out, args.extra)
                summarize(args.out)
    print(summarize(args.out))


if __name__ == "__main__":
    main()
