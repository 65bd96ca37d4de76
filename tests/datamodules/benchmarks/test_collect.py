"""Multirun aggregation: summary.{csv,md,png} with mean ± std over seeds per group, failed runs listed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from datamodules.benchmarks.collect import collect
from datamodules.world.claims import CATEGORIES
from tests.conftest import ROOT

CATS = [c for c in CATEGORIES if c.startswith(("replace_", "swap_"))]


def _run(root, name, overrides, acc, r1):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    metrics = {f"eval/synthetic/{c}/acc": acc for c in CATS} | {"val/i2t_r1": r1, "val/t2i_r1": r1 + 2}
    (d / "metrics.json").write_text(json.dumps(metrics))


def test_collect_groups_by_overrides_without_seed(tmp_path):
    _run(tmp_path, "0", ["experiment=a", "seed=0"], 60.0, 10.0)
    _run(tmp_path, "1", ["experiment=a", "seed=1"], 70.0, 20.0)
    _run(tmp_path, "2", ["experiment=b", "seed=0"], 80.0, 30.0)
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "FAILED").write_text("x")
    res = collect(tmp_path)
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "summary.csv").open())}
    assert set(rows) == {"experiment=a", "experiment=b"} and rows["experiment=a"]["runs"] == "2"
    assert float(rows["experiment=a"]["swap+replace mean mean"]) == 65.0
    assert float(rows["experiment=a"]["swap+replace mean std"]) == pytest.approx(
        7.0711, abs=1e-4
    )  # stdev(60, 70)
    assert float(rows["experiment=a"]["val R@1 mean"]) == 16.0  # ((10+12)/2 + (20+22)/2) / 2
    md = (tmp_path / "summary.md").read_text()
    assert "| experiment=a | 2 | 65.0 ± 7.1 |" in md and "**1 failed run(s)**" in md and res["failed"]
    assert (tmp_path / "summary.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_multirun_ends_with_its_summary(tmp_path):
    """The issue's command with tiny settings: 2 experiments x 2 seeds -> summary in the multirun folder."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "experiment=clip_baseline,negclip_text",
        "seed=0,1",
        "debug=fdr",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
    ]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    # Groups are named by what was swept; the shared overrides are listed once above the table.
    assert sorted(r["group"] for r in rows) == ["experiment=clip_baseline", "experiment=negclip_text"]
    assert all(r["runs"] == "2" for r in rows) and (tmp_path / "summary.png").is_file()
    assert "All runs: `debug=fdr" in (tmp_path / "summary.md").read_text()
