"""Train a CLIP model with contrastive (+ hard-negative) losses.

    python train.py                                   # default: tiny ViT on the synthetic world, CPU
    python train.py trainer=gpu model=vit_b32 data=pairs data.source.train_path=/data/train.jsonl
    python train.py -m seed=0,1,2                     # multirun, one run dir per job

Run directory: `.hydra/config.yaml` (resolved), `checkpoints/last.ckpt` (+ best), `metrics.json` (flat
`split/name` keys), `eval/results.{json,csv,md}`; the last printed line names the run directory.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.benchmarks.base import ClipScorer
from evaluate import instantiate_benchmarks, markdown_table, resolve_device, run_benchmarks
from lightning_modules.clip_module import ClipModule
from lightning_modules.losses.base import LossSum

log = logging.getLogger(__name__)


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def maybe_preprocess(cfg: DictConfig) -> None:
    """With a raw source selected (raw=...), build or refresh the clean manifest before training on it."""
    pre = cfg.get("preprocess")
    raw = pre.get("raw") if pre is not None else None
    source = cfg.data.get("source") or {}
    if raw is None:
        if "preprocess" in source:
            raise ValueError(
                "preprocess.raw: data=preprocessed needs a raw source, e.g. raw=noisy_synthetic or raw=pairs "
                "preprocess.raw.train_path=/data/raw.jsonl"
            )
        return
    if "preprocess" not in source:
        raise ValueError(
            "preprocess.raw is set but data.source does not read preprocessed manifests; add data=preprocessed "
            "(or remove raw=...)"
        )
    from datamodules.preprocess.run import ensure_clean

    ensure_clean(pre)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fits, tests and evaluates one run; returns the final metrics (flat keys)."""
    try:
        return _train(cfg)
    finally:
        _finish_wandb()  # multirun jobs must not share one W&B run


def _train(cfg: DictConfig) -> dict[str, float]:
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    (out_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(run_cfg), out_dir / ".hydra" / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)

    maybe_preprocess(cfg)
    spec = instantiate(cfg.model)
    datamodule = instantiate(
        cfg.data, image_transform=spec.image_transform(train=False), tokenizer=spec.tokenizer()
    )
    module = ClipModule(
        spec,
        LossSum(
            {name: instantiate(node) for name, node in (cfg.get("loss") or {}).items() if node is not None}
        ),
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=run_cfg,
        **cfg.module,
    )
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if v is not None]
    callbacks = [instantiate(v) for v in (cfg.get("callbacks") or {}).values() if v is not None]
    if not loggers:  # LearningRateMonitor refuses to run without a logger: drop it rather than fail
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for lg in loggers:
        lg.log_hyperparams(run_cfg)

    trainer.fit(module, datamodule=datamodule)
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=False)  # final weights (+ optimizer state for resuming)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.run_test:
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})

    if cfg.evaluate_after and trainer.is_global_zero:
        device = resolve_device(cfg.eval_device)
        model = module.model.to(device).eval()
        scorer = ClipScorer(
            model, spec.image_transform(), spec.tokenizer(), device=device, batch_size=cfg.eval_batch_size
        )
        report = run_benchmarks(
            scorer,
            instantiate_benchmarks(cfg.get("benchmark")),
            out_dir / "eval",
            context={"run_config": run_cfg},
        )
        metrics.update({f"eval/{k}": v for k, v in report["results"].items()})
        print(markdown_table(report["results"], report["chance"], report["counts"]))
        for lg in loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in report["results"].items()}, step=trainer.global_step)

    if trainer.is_global_zero:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        keys = ("val/r_mean", "val/i2t_r1", "val/t2i_r1", "test/i2t_r1", "test/t2i_r1")
        print("final: " + ", ".join(f"{k}={metrics[k]:.2f}" for k in keys if k in metrics))
        print(f"run dir: {out_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/r_mean")  # the value an Optuna sweep optimises


if __name__ == "__main__":
    main()
