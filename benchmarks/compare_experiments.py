"""Runs experiments × seeds at equal training steps, resumably, and tabulates them with the multirun summary.

    python benchmarks/compare_experiments.py --experiments clip_baseline all --seeds 0 1 2
    python benchmarks/compare_experiments.py --summarize-only          # re-tabulate finished runs

Each run is `train.py experiment=<e> seed=<s>` in its own directory `<out>/<e>/seed<s>`; finished runs (with a
metrics.json) are skipped, so the script resumes (what a Hydra multirun, `train.py -m experiment=a,b seed=0,1,2`,
does not). The table is `datamodules.benchmarks.collect`'s: `<out>/summary.{csv,md,png}`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.benchmarks.collect import collect  # noqa: E402
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
    """The table of every finished run below `out`: `datamodules.benchmarks.collect` (the same summary a Hydra
    multirun ends with: summary.{csv,md,png}, mean ± std over seeds, one row per experiment)."""
    collect(out)
    return (out / "summary.md").read_text()


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
