"""StepProfile: torch.profiler over a window of a real run's training steps (its CUDA figures: gpu_checks.sh)."""

from __future__ import annotations

import json

import pytest

from lightning_modules.step_profile import StepProfile


def _profile(cfg_factory, tmp_path, *extra: str) -> dict:
    from train import train

    out = tmp_path / "prof.json"
    cfg = cfg_factory(
        "experiment=hardneg",
        "trainer.val_check_interval=100000",
        "+trainer.limit_val_batches=0",
        "run_test=false",
        "evaluate_after=false",
        "+callbacks.step_profile._target_=lightning_modules.step_profile.StepProfile",
        f"+callbacks.step_profile.out={out}",
        *extra,
    )
    train(cfg)
    return json.loads(out.read_text())


def test_profiles_the_window_of_a_real_run(cfg_factory, tmp_path):
    rep = _profile(
        cfg_factory,
        tmp_path,
        "trainer.max_steps=6",
        "+callbacks.step_profile.start=2",
        "+callbacks.step_profile.steps=3",
    )
    assert rep["steps"] == 3 and rep["start"] == 2 and rep["positives"] == 32
    assert rep["device"] == "cpu" and rep["device_ms_per_step"] is None and rep["top_device"] == []
    # the operators ran on the host thread one after another: their own times fit in the step's wall time
    own = sum(r["ms_per_step"] for r in rep["top_cpu"])
    assert 0 < own <= rep["wall_ms_per_step"] * 1.01, rep
    ops = {r["op"] for r in rep["top_cpu"]}
    assert any(op.startswith("aten::") for op in ops), ops
    assert rep["aten_ops_per_step"] > 100  # a tiny CLIP's forward, backward and AdamW step
    assert len(rep["host_ms_each_step"]) == 3
    assert sum(rep["host_ms_each_step"]) == pytest.approx(3 * rep["wall_ms_per_step"], rel=1e-3)


def test_a_run_ending_inside_the_window_reports_the_steps_it_profiled(cfg_factory, tmp_path):
    rep = _profile(
        cfg_factory,
        tmp_path,
        "trainer.max_steps=3",
        "+callbacks.step_profile.start=1",
        "+callbacks.step_profile.steps=10",
    )
    assert rep["steps"] == 2


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="steps >= 1"):
        StepProfile(steps=0)
