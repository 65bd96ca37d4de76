"""Aggregate finished runs: a multirun folder (or any folder of run folders) into summary.csv, summary.md and
summary.png — mean ± std over seeds, one row per combination of the other overrides.

    python -m datamodules.benchmarks.collect logs/train/multiruns/<time>            # writes into that folder
    python -m datamodules.benchmarks.collect benchmarks/results/relations/runs --out /tmp/summary

A run folder is any folder holding `metrics.json` (a finished run) or `FAILED` (a crashed one, counted and listed).
Its group is read from `.hydra/overrides.yaml` (the overrides that launched it, without `seed=` and without
folder/logging keys); runs launched without Hydra's overrides file are grouped by their folder name. Multiruns
call this automatically at the end (`hydra.callbacks.collect` in conf/hydra/default.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import yaml

from datamodules.atomic import atomic_open, atomic_write_text
from datamodules.world.claims import CATEGORIES

log = logging.getLogger(__name__)

SWAP_REPLACE = [c for c in CATEGORIES if c.startswith(("replace_", "swap_"))]
IGNORED_KEYS = ("seed", "hydra.", "paths.", "trainer.enable_progress_bar", "logger")


def append_jsonl(path: Path, record: dict) -> None:
    """Appends `record` as one JSON line to `path` (the result logs of the benchmark scripts), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def headline_metrics(m: dict[str, float]) -> dict[str, float]:
    """The numbers a run is read for, from its flat metrics: the swap+replace mean (only when all six categories are
    there), each synthetic category, the Winoground-style group score, val/test R@1 (mean of both directions)."""
    out: dict[str, float] = {}
    cats = {c: m.get(f"eval/synthetic/{c}/acc") for c in CATEGORIES}
    if all(cats[c] is not None for c in SWAP_REPLACE):
        out["swap+replace mean"] = statistics.mean(cats[c] for c in SWAP_REPLACE)
    out |= {c: v for c, v in cats.items() if v is not None}
    if "eval/synthetic/winoground/group" in m:
        out["wino group"] = m["eval/synthetic/winoground/group"]
    for split in ("val", "test"):
        if f"{split}/i2t_r1" in m and f"{split}/t2i_r1" in m:
            out[f"{split} R@1"] = (m[f"{split}/i2t_r1"] + m[f"{split}/t2i_r1"]) / 2
    return out


def _overrides_and_seed(run: Path) -> tuple[list[str] | None, Any]:
    """A run's overrides without seed and folder/logging keys (None without an overrides file) and its seed
    override (None if absent)."""
    ov = run / ".hydra" / "overrides.yaml"
    if not ov.is_file():
        return None, None
    items = yaml.safe_load(ov.read_text()) or []
    kept = [o for o in items if not o.lstrip("+~").startswith(IGNORED_KEYS)]
    seed = next((o.split("=", 1)[1] for o in items if o.startswith("seed=")), None)
    return sorted(kept), seed


def _groups_and_seeds(runs: list[Path]) -> dict[Path, tuple[str, Any]]:
    """Each run's group: its overrides minus those every run shares (a sweep's fixed command-line settings), so
    groups are named by what was swept; the folder name for a run without an overrides file."""
    parsed = {run: _overrides_and_seed(run) for run in runs}
    lists = [set(ov) for ov, _ in parsed.values() if ov is not None]
    common = set.intersection(*lists) if len(lists) > 1 else set()
    out = {}
    for run, (ov, seed) in parsed.items():
        if ov is None:
            out[run] = (run.name, None)
        else:
            out[run] = (" ".join(o for o in ov if o not in common) or "(defaults)", seed)
    return out


def common_overrides(root: Path) -> list[str]:
    """The overrides shared by every run below `root` (shown once above the summary table)."""
    lists = [set(ov) for ov, _ in (_overrides_and_seed(r) for r in find_runs(root)) if ov is not None]
    return sorted(set.intersection(*lists)) if len(lists) > 1 else []


def find_runs(root: Path) -> list[Path]:
    return sorted(
        {p.parent for name in ("metrics.json", "FAILED") for p in root.rglob(name) if ".hydra" not in p.parts}
    )


def collect(root: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Summarises every run below `root` into `out` (default: `root`). Returns {"groups": {...}, "failed": [...]}."""
    root = Path(root)
    out = Path(out) if out is not None else root
    groups: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list] = {}
    failed: list[str] = []
    runs = find_runs(root)
    names = _groups_and_seeds(runs)
    for run in runs:
        g, seed = names[run]
        if (run / "FAILED").is_file() and not (run / "metrics.json").is_file():
            failed.append(f"{run.relative_to(root)} ({g})")
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        for k, v in headline_metrics(metrics).items():
            groups.setdefault(g, {}).setdefault(k, []).append(v)
        seeds.setdefault(g, []).append(seed)
    columns = list(dict.fromkeys(k for cols in groups.values() for k in cols))
    common = common_overrides(root) if len(runs) > 1 else []
    _write(out, groups, seeds, columns, failed, common)
    return {"groups": groups, "failed": failed, "columns": columns, "common": common}


def fmt(values: list[float]) -> str:
    """'mean ± std' over seeds with one decimal; one value as is; '–' for none."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _write(
    out: Path, groups: dict, seeds: dict, columns: list[str], failed: list[str], common: list[str] = ()
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "runs", *[f"{c} mean" for c in columns], *[f"{c} std" for c in columns]])
    for g, cols in groups.items():
        means = [statistics.mean(cols[c]) if c in cols else "" for c in columns]
        stds = [statistics.stdev(cols[c]) if len(cols.get(c, [])) > 1 else "" for c in columns]
        w.writerow([g, len(seeds[g]), *means, *stds])
    atomic_write_text(out / "summary.csv", buf.getvalue())
    lines = [f"All runs: `{' '.join(common)}`", ""] if common else []
    lines += [
        "| group | runs | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
        *[
            f"| {g} | {len(seeds[g])} | " + " | ".join(fmt(cols.get(c, [])) for c in columns) + " |"
            for g, cols in groups.items()
        ],
    ]
    if failed:
        lines += ["", f"**{len(failed)} failed run(s)** (traceback in each folder's `traceback.txt`):"]
        lines += [f"- {f}" for f in failed]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    if groups:
        _plot(out / "summary.png", groups, columns)


def _plot(path: Path, groups: dict, columns: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in columns if c not in ("count", "negation")] or columns
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(shown) * max(1, len(groups)) ** 0.5), 4))
    width = 0.8 / len(groups)
    for i, (g, cols) in enumerate(groups.items()):
        xs = [j + i * width for j in range(len(shown))]
        means = [statistics.mean(cols[c]) if c in cols else 0 for c in shown]
        errs = [statistics.stdev(cols[c]) if len(cols.get(c, [])) > 1 else 0 for c in shown]
        bars = ax.bar(xs, means, width, yerr=errs, capsize=2, label=g[:60])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(shown))], shown, rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


try:  # Hydra callback: a multirun ends with its summary
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class CollectOnMultirunEnd(_HydraCallback):
    """`hydra.callbacks.collect`: writes summary.{csv,md,png} into the sweep folder after every job of a multirun
    (Hydra re-raises a failed job's error after the sweep, before `on_multirun_end`, so the summary is kept up to
    date job by job and lists the failed ones) and once more when the multirun ends."""

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        if str(config.hydra.mode) == "RunMode.MULTIRUN":
            self.on_multirun_end(config)

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        if root.is_dir() and find_runs(root):
            res = collect(root)
            print(
                f"multirun summary: {root / 'summary.md'}"
                + (f" ({len(res['failed'])} failed)" if res["failed"] else "")
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="a multirun folder, or any folder of run folders")
    ap.add_argument("--out", type=Path, default=None, help="where summary.{csv,md,png} go (default: root)")
    args = ap.parse_args()
    res = collect(args.root, args.out)
    print((Path(args.out or args.root) / "summary.md").read_text())
    if res["failed"]:
        print(f"{len(res['failed'])} failed run(s)")


if __name__ == "__main__":
    main()
