"""benchmarks/parallel_grid.py: headline extraction and grid validation (the parallel launch itself is exercised by
the GPU study recorded in benchmarks/results/relations/gpu_h100)."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.parallel_grid import copy_small, headline
from datamodules.world.claims import CATEGORIES

ROOT = Path(__file__).resolve().parents[2]


def test_headline_means_the_six_swap_replace_categories_and_averages_r1():
    cats = list(CATEGORIES[:6])  # the swap+replace categories
    metrics = {f"eval/synthetic/{c}/acc": float(10 * i) for i, c in enumerate(cats)}
    metrics |= {"eval/synthetic/count/acc": 70.0, "val/i2t_r1": 20.0, "val/t2i_r1": 30.0}
    out = headline(metrics)
    assert out["swap_replace_mean"] == 25.0  # (0 + 10 + ... + 50) / 6
    assert out["val_r1"] == 25.0
    assert out["count"] == 70.0 and out["negation"] is None
    assert "test_r1" not in out
    partial = headline({"eval/synthetic/replace_color/acc": 90.0})
    assert partial["swap_replace_mean"] is None  # never a mean over a subset of the categories


def test_copy_small_skips_checkpoints(tmp_path):
    src = tmp_path / "run"
    (src / "checkpoints").mkdir(parents=True)
    (src / "checkpoints" / "last.ckpt").write_bytes(b"x" * 10)
    (src / "metrics.json").write_text("{}")
    (src / "csv").mkdir()
    (src / "csv" / "metrics.csv").write_text("step\n")
    copy_small(src, tmp_path / "out")
    kept = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert kept == ["csv/metrics.csv", "metrics.json"]


def test_bad_grid_and_unknown_names_fail_with_the_file_named(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"a": "experiment=hardneg"}))  # a string, not a list of overrides
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, str(ROOT / "benchmarks" / "parallel_grid.py"), *a],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    res = run(str(grid), "--out", str(tmp_path / "o"))
    assert res.returncode != 0 and "grid.json" in res.stderr and "list of overrides" in res.stderr
    grid.write_text(json.dumps({"a": ["experiment=hardneg"]}))
    res = run(str(grid), "--out", str(tmp_path / "o"), "--only", "b")
    assert res.returncode != 0 and "['b']" in res.stderr
