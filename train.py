"""Train a CLIP model with contrastive (+ hard-negative) losses.

    python train.py                                   # default: tiny ViT on the synthetic world, CPU
    python train.py trainer=gpu model=vit_b32 data=pairs data.source.train_path=/data/train.jsonl
    python train.py -m seed=0,1,2                     # multirun, one run dir per job

Run directory: `.hydra/config.yaml` (resolved), `checkpoints/last.ckpt` (+ best), `metrics.json` (flat
`split/name` keys), `eval/results.{json,csv,md}`; the last printed line names the run directory.
(Library code: `lightning_modules.training.run_training`.)
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_modules.training import run_training


def train(cfg: DictConfig) -> dict[str, float]:
    """Fits, tests and evaluates one run; returns the final metrics (flat keys). A failing run leaves
    `traceback.txt` and a `FAILED` marker in its folder (a multirun's summary lists it) and re-raises."""
    try:
        return run_training(cfg)
    except BaseException:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "traceback.txt").write_text(traceback.format_exc())
        (out / "FAILED").write_text("see traceback.txt\n")
        raise
    finally:  # multirun jobs must not share one W&B run
        if "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if not name:  # a plain run returns nothing; runs without validation (benchmarks) must not fail here
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric: '{name}' is not among the run's metrics ({sorted(metrics)[:12]} ...)"
        )
    return metrics[name]  # the value an Optuna sweep optimises


if __name__ == "__main__":
    main()
