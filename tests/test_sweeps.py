"""Hydra sweepers and launchers of the `[sweep]` extra: the Optuna search and the SLURM launcher configs compose,
and a 3-trial Optuna sweep runs on CPU, maximising the metric train.py returns."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, ROOT, TINY

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[sweep]'")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def test_optuna_and_slurm_configs_compose():
    cfg = _compose("hparams_search=optuna", "launcher=slurm")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/r_mean"
    assert set(cfg.hydra.sweeper.params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "scheduler.warmup_steps",
    }
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


def test_three_trial_optuna_sweep_on_cpu(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TINY,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "evaluate_after=false",
        "run_test=false",
        "logger=none",
        "callbacks=none",
        f"hydra.sweep.dir={sweep}",
    ]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    trials = sorted(d for d in sweep.iterdir() if d.is_dir() and d.name.isdigit())
    assert [d.name for d in trials] == ["0", "1", "2"]
    values = [json.loads((d / "metrics.json").read_text())["val/r_mean"] for d in trials]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(values))
    assert set(result["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "scheduler.warmup_steps"}
    summary = (sweep / "summary.md").read_text()
    assert "optimizer.lr=" in summary and "All runs:" in summary
