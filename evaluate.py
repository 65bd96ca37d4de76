"""Evaluate checkpoints or open_clip models on the configured benchmarks.

    python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=[runA/last.ckpt,runB/last.ckpt]              # side-by-side comparison
    python evaluate.py open_clip.name=ViT-B-32 open_clip.pretrained=/weights/vit_b32.safetensors \
        benchmark=[sugarcrepe,aro_vg_relation,winoground]

A train.py checkpoint is rebuilt from the config saved inside it (loaded with `weights_only=True`; the config is
read as data, never instantiated). Per model: `results.json` (flat `benchmark/subset/metric`), `results.csv`,
`results.md` (chance beside each score), `plot_<benchmark>.png`, `failures.html`. With several models:
`comparison.md` and comparison plots in the run directory. A benchmark whose data is missing is reported and
skipped; the others still run. The last printed line names the run directory.
(Library code: `lightning_modules.inference` loads models, `datamodules.benchmarks.runner` scores and reports.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.benchmarks.runner import compare_models, instantiate_benchmarks
from lightning_modules.console import quiet_libraries
from lightning_modules.inference import load_models, resolve_device


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Scores every configured model on `cfg.benchmark`. Returns the flat results of the single model, or
    {label: results} when several models are compared."""
    quiet_libraries()
    paths = cfg.get("ckpt_path")
    paths = list(paths) if isinstance(paths, (list, ListConfig)) else ([paths] if paths else [])
    oc = cfg.get("open_clip")
    models = load_models(paths, OmegaConf.to_container(oc) if oc is not None else None)
    out_dir = Path(cfg.paths.output_dir)
    reports: dict[str, dict] = {}
    per_model = compare_models(
        models,
        instantiate_benchmarks(cfg.benchmark),
        out_dir,
        device=resolve_device(cfg.device),
        batch_size=cfg.batch_size,
        reports=reports,
    )
    if cfg.get("log_wandb"):
        log_to_wandb(cfg, reports, models, paths)
    (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / ".hydra" / "config.yaml", resolve=True)
    print(f"run dir: {out_dir}")
    return next(iter(per_model.values())) if len(per_model) == 1 else per_model


def training_wandb_id(run_cfg: dict, ckpt_path: str | None) -> str | None:
    """The W&B id of the run that wrote a checkpoint, from the run folder's `wandb/*-run-<time>-<id>` directory."""
    if not ckpt_path:
        return None
    run_dir = Path(ckpt_path).resolve().parent.parent
    runs = sorted(run_dir.glob("wandb/*run-*-*"))
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def log_to_wandb(cfg: DictConfig, reports: dict[str, dict], models: dict, paths: list) -> None:
    """One W&B run per evaluated model (job_type evaluate, grouped by the model's experiment), with stable keys
    `eval/<benchmark>/<subset>/<metric>`, the evaluation as media (`wandb_media.log_eval_media`: long table, bar
    chart, failure cases), the evaluate config, the checkpoint's training config and the training run's W&B id."""
    import wandb

    from lightning_modules.wandb_media import log_eval_media

    ckpts = {label: p for label, p in zip(models, paths)}
    for label, report in reports.items():
        res = report["results"]
        run_cfg = models[label][2] or {}
        tags = list(run_cfg.get("tags") or [])
        run = wandb.init(
            project=cfg.wandb.project,
            name=cfg.wandb.get("name") or f"eval-{label}",
            group=tags[0] if tags else None,
            job_type="evaluate",
            mode=cfg.wandb.mode,
            dir=str(cfg.paths.output_dir),
            config={
                "evaluate": OmegaConf.to_container(cfg, resolve=True),
                "training": run_cfg,
                "checkpoint": str(ckpts.get(label, "")),
                "training_wandb_id": training_wandb_id(run_cfg, ckpts.get(label)),
            },
            reinit="finish_previous",
        )
        try:
            run.log({f"eval/{k}": v for k, v in res.items()})
            log_eval_media(run, report)
        finally:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
