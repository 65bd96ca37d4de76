"""benchmarks/loader_throughput.py and its StepClock: the window measure, and a run of another checkout."""

import json
import os
import subprocess
import sys
import types

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from stepclock import StepClock  # noqa: E402


def test_step_clock_measures_one_window_after_the_warm_up(monkeypatch, tmp_path):
    """Scripted host clock: steps of 1 s, fetches of 0.5 s except one of 3 s after the warm-up; 4 positives on 2
    ranks. Steps 0-1 are warm-up (skip=2): the window runs from step 2's start to step 6's start."""
    import stepclock

    t = {"now": 0.0}
    monkeypatch.setattr(stepclock.time, "perf_counter", lambda: t["now"])
    clock = StepClock(out=str(tmp_path / "c.json"), skip=2)
    trainer = types.SimpleNamespace(world_size=2, is_global_zero=True)
    batch = types.SimpleNamespace(num_pos=4)
    for i in range(7):
        t["now"] += 3.0 if i == 4 else 0.5
        clock.on_train_batch_start(trainer, None, batch, i)
        t["now"] += 1.0
        clock.on_train_batch_end(trainer, None, None, batch, i)
    clock.on_train_end(trainer, None)
    got = json.loads((tmp_path / "c.json").read_text())
    span = 4 * 1.5 + 2.5  # steps 3..6 start 1.5 s after the previous one, step 4 2.5 s later still
    assert got == {
        "clock_steps": 4,
        "clock_samples_per_second": round(4 * 8 / span, 2),
        "clock_data_wait_fraction": round((3 * 0.5 + 3.0) / span, 4),
    }


@pytest.mark.slow
def test_loader_throughput_times_a_run_with_the_step_clock(tmp_path):
    out = tmp_path / "lt.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "loader_throughput.py"), "--name", "t", "--skip", "5"]
    cmd += ["--run-dir", str(tmp_path / "runs"), "--out", str(out), "--root", str(ROOT), "--"]
    cmd += ["trainer.max_steps=20", "data.num_workers=0"]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HARDNEG_ROOT": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-2000:]
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["status"] == "ok" and row["clock_steps"] == 14, row
    # the module's windowed metric and the external clock measure the same thing
    assert row["clock_samples_per_second"] == pytest.approx(row["samples_per_second_median"], rel=0.25)
