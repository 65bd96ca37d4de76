"""`train.py ckpt_path=<checkpoint>` resumes exactly: a run SIGKILLed mid-epoch and resumed from its last periodic
checkpoint logs the same training losses, step for step, as a run that was never interrupted."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMON = [
    "experiment=hardneg",  # per-sample negatives and image edits: their order must be replayed too
    "data.source.num_train=320",  # 10 steps per epoch at batch 32: the resumed part crosses epoch boundaries
    "data.source.num_val=64",
    "data.source.num_test=32",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "data.num_workers=2",
    "trainer.max_steps=40",
    "trainer.val_check_interval=12",
    "trainer.log_every_n_steps=1",
    "checkpoint_every_n_steps=8",
    "run_test=false",
    "evaluate_after=false",
    "trainer.enable_progress_bar=false",
]


def _train(run_dir, *extra):
    cmd = [sys.executable, str(ROOT / "train.py"), *COMMON, *extra, f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _losses(run_dir) -> dict[int, float]:
    out = {}
    for path in sorted(run_dir.glob("csv/**/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                out[int(row["step"])] = float(row["train/loss"])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(compiled, tmp_path):
    """Also with module.compile (inductor): the resumed run compiles again and continues exactly."""
    mode = [f"module.compile.enabled={str(compiled).lower()}"]
    full = _train(tmp_path / "full", *mode)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _train(
        tmp_path / "crash",
        *mode,
        "+callbacks.kill._target_=tests.helpers.KillAtStep",
        "+callbacks.kill.step=21",
    )
    assert killed.returncode == -9  # SIGKILL after step 21 (mid-epoch 3); last checkpoint: step 16
    ckpt = tmp_path / "crash" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    resumed = _train(tmp_path / "crash", *mode, f"ckpt_path={ckpt}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for run in (
        full,
        resumed,
    ):  # the compiled runs did compile (the resumed one again), the eager ones did not
        assert ("torch.compile: 1 module(s)" in run.stdout + run.stderr) == compiled
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "crash")
    steps = sorted(k for k in a if k >= 16)
    assert steps and all(k in b for k in steps), (sorted(a), sorted(b))
    # CPU, same process layout: the same numbers up to float reduction order
    worst = max(abs(a[k] - b[k]) for k in steps)
    assert worst < 1e-5, {k: (a[k], b[k]) for k in steps}
