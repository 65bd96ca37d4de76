"""Checkpoint and report writes are atomic: a kill at any instant leaves the previous file loadable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from datamodules.atomic import atomic_write_text, clean_stale_temps, temp_path
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from tests.conftest import ROOT

WRITER = """
import sys, torch
from lightning_modules.checkpoint_io import AtomicCheckpointIO
io, path = AtomicCheckpointIO(), sys.argv[1]
print("ready", flush=True)
i = 0
while True:
    i += 1
    io.save_checkpoint({"step": i, "w": torch.full((4_000_000,), float(i))}, path)
"""


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_stale_temps_of_dead_writers_are_cleaned_live_ones_kept(tmp_path):
    target = tmp_path / "metrics.json"
    dead = tmp_path / f".metrics.json.{2**22 + 12345}.abcdef.tmp"  # a pid far above pid_max: not running
    live = temp_path(target)  # this process
    dead.write_text("x")
    live.write_text("y")
    assert clean_stale_temps(tmp_path) == 1
    assert live.exists() and not dead.exists()
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"


@pytest.mark.slow
def test_twenty_kills_during_checkpoint_writes_leave_a_loadable_file(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 0, "w": torch.zeros(1)}, path)
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    steps = []
    for _ in range(20):
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], env=env, cwd=ROOT, stdout=subprocess.PIPE
        )
        assert p.stdout.readline().strip() == b"ready"  # imports done; from now on it saves 16 MB in a loop
        time.sleep(rng.uniform(0.05, 1.0))  # a save takes ~0.1 s: kills land at every stage of a write
        p.send_signal(signal.SIGKILL)
        p.wait()
        ck = torch.load(path, weights_only=True)  # never truncated
        assert ck["w"].numel() in (1, 4_000_000) and float(ck["w"][0]) == ck["step"]
        steps.append(ck["step"])
    assert max(steps) > 0  # the writer did replace the file between kills
    AtomicCheckpointIO().save_checkpoint(
        {"step": -1}, path
    )  # the next save removes the killed writers' temps
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
