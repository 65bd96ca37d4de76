"""benchmarks/overhead.py runs end to end and reports both sides (a smoke test: timings are not asserted)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_overhead_benchmark_reports_framework_and_bare_steps(tmp_path):
    out = tmp_path / "o.jsonl"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "overhead.py"),
        "--steps",
        "8",
        "--warmup",
        "2",
        "--batch",
        "8",
    ]
    p = subprocess.run([*cmd, "--hardneg", "1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["steps_measured"] == 5 and row["bare_ms_median"] > 0 and row["framework_ms_median"] > 0
    # blocks of steps synchronised only at block boundaries, and the profiler's outputs
    prof = tmp_path / "prof"
    p = subprocess.run(
        [*cmd, "--block", "3", "--profile", str(prof), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads(out.read_text().splitlines()[-1])
    assert (
        row["block"] == 3 and row["steps_measured"] == 3
    )  # 8 steps: 2 full blocks of 3, the first holds warm-up
    assert {f.name for f in prof.iterdir()} == {
        "tiny-vit_hn0_ops.txt",
        "tiny-vit_hn0_syncs.txt",
        "tiny-vit_hn0_trace.json.gz",
    }
