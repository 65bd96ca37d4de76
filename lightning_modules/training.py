"""One training run from a composed config: data (preprocessing first when `data=preprocessed`), hard-negative
generators, model, losses, trainer; fit, test, then the configured benchmarks on the final weights. `train.py` is
the Hydra entry point around `run_training`.

Run directory: `.hydra/config.yaml` (resolved), `checkpoints/last.ckpt` (+ best), `metrics.json` (flat
`split/name` keys), `eval/results.{json,csv,md}`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.atomic import atomic_write_text
from datamodules.benchmarks.runner import instantiate_benchmarks, markdown_table, run_benchmarks
from datamodules.datamodule import ClipDataModule
from lightning_modules.clip_module import ClipModule
from lightning_modules.compilation import CompileSpec
from lightning_modules.console import quiet_libraries
from lightning_modules.inference import ClipScorer, load_checkpoint, resolve_device
from lightning_modules.losses.base import LossSum
from lightning_modules.model_factory import ModelSpec
from lightning_modules.parallel import is_sharded
from lightning_modules.wandb_media import log_eval_media

log = logging.getLogger(__name__)


def _group(node: Any) -> dict[str, Any]:
    """A multi-select group (`loss`, `negatives`) instantiated: name -> object, null entries dropped."""
    return {name: instantiate(v) for name, v in (node or {}).items() if v is not None}


def build_loss(cfg: DictConfig) -> LossSum:
    """The run's loss: every term of the `loss` group, summed (`LossSum`)."""
    return LossSum(_group(cfg.get("loss")))


def build_datamodule(cfg: DictConfig, spec: ModelSpec) -> ClipDataModule:
    """The DataModule of `cfg.data` with the model's transform and tokenizer and the generators of the top-level
    `negatives` group. With `data=preprocessed` the clean manifests are built (or reused) in `prepare_data`."""
    if "negatives" in cfg.data:
        raise ValueError(
            "data.negatives: hard-negative generators are selected by the top-level `negatives` group "
            "(negatives=[text_rules,...], overrides as negatives.<name>.<key>=...); a negatives YAML must not "
            "declare `# @package data.negatives`"
        )
    source_cls = get_class(cfg.data.source._target_)
    raw = (cfg.get("preprocess") or {}).get("raw")
    reads_preprocessed = getattr(source_cls, "reads_preprocessed", False)
    if reads_preprocessed and raw is None:
        raise ValueError(
            "preprocess.raw: data=preprocessed needs a raw source, e.g. raw=noisy_synthetic or raw=pairs "
            "preprocess.raw.train_path=/data/raw.jsonl"
        )
    if raw is not None and not reads_preprocessed:
        raise ValueError(
            "preprocess.raw is set but data.source does not read preprocessed manifests; add data=preprocessed "
            "(or remove raw=...)"
        )
    return instantiate(
        cfg.data,
        image_transform=spec.uint8_transform(train=False),  # normalised on the device by the module
        tokenizer=spec.tokenizer(),
        # padding columns dropped in the workers (a multiple of 8 when the run compiles: CompileSpec.columns_multiple)
        text_trim_multiple=_compile_spec(cfg).columns_multiple(spec.text_trim_multiple),
        negatives=_group(cfg.get("negatives")),
    )


def _compile_spec(cfg: DictConfig) -> CompileSpec:
    """The run's `module.compile` settings (what `ClipModule` compiles with)."""
    settings = OmegaConf.select(cfg, "module.compile")
    return CompileSpec(**OmegaConf.to_container(settings)) if settings else CompileSpec()


def _fill_image_size(cfg: DictConfig, spec: ModelSpec) -> None:
    """`data.source.image_size: null` (the synthetic world's default) renders at the model's input size, so images
    need no resampling on the way in; the resolved size is what the run config records."""
    source = cfg.data.get("source") or {}
    if "image_size" in source and source.image_size is None:
        with open_dict(cfg):
            cfg.data.source.image_size = spec.image_size


def _hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job ([] outside one, e.g. under compose())."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig was not set
        return []


def override_tags(overrides: list[str], limit: int = 20) -> list[str]:
    """W&B tags from Hydra overrides: `key=value` strings without path/logging/Hydra keys, at most 64 characters
    each (W&B's limit), at most `limit` of them."""
    skip = ("hydra.", "paths.", "logger", "trainer.enable_progress_bar", "callbacks", "+hydra", "~hydra")
    tags = [o.lstrip("+~")[:64] for o in overrides if not o.lstrip("+~").startswith(skip)]
    return tags[:limit]


def eval_context(run_cfg: dict, source: Any) -> dict[str, Any]:
    """What benchmarks may use besides the scorer: the run config and the synthetic world (and image size) the run
    trained on, taken from its data source (None for real data)."""
    return {
        "run_config": run_cfg,
        "world": getattr(source, "world", None),
        "image_size": getattr(source, "image_size", None),
    }


def run_training(cfg: DictConfig) -> dict[str, float]:
    """Fits, tests and evaluates one run; returns the final metrics (flat keys)."""
    quiet_libraries()
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():  # before building anything
        raise FileNotFoundError(f"ckpt_path: checkpoint to resume from not found: '{cfg.ckpt_path}'")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = instantiate(cfg.model)
    _fill_image_size(cfg, spec)
    run_cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    (out_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(run_cfg), out_dir / ".hydra" / "config.yaml")
    L.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg, spec)
    module = ClipModule(
        spec,
        build_loss(cfg),
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=run_cfg,
        **cfg.module,
    )
    loggers = list(_group(cfg.get("logger")).values())
    callbacks = list(_group(cfg.get("callbacks")).values())
    if not loggers:  # LearningRateMonitor refuses to run without a logger: drop it rather than fail
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    strategy = instantiate(cfg.strategy) if cfg.get("strategy") is not None else "auto"
    trainer: L.Trainer = instantiate(
        cfg.trainer, strategy=strategy, logger=loggers or False, callbacks=callbacks
    )
    for lg in loggers:
        lg.log_hyperparams(run_cfg)
        if isinstance(lg, L.pytorch.loggers.WandbLogger):  # the run's summary keeps the best, not the last
            extra = override_tags(_hydra_overrides())
            if extra:  # filterable in the W&B UI: the command-line overrides of this run
                lg.experiment.tags = tuple(dict.fromkeys([*(lg.experiment.tags or ()), *extra]))
            for key in ("val/r_mean", "val/i2t_r1", "val/t2i_r1"):
                lg.experiment.define_metric(key, summary="max")

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=False)  # final weights (+ optimizer state)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    def save_metrics() -> (
        None
    ):  # after each stage: a later stage that fails does not lose the earlier numbers
        if trainer.is_global_zero:
            atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))

    save_metrics()
    if cfg.run_test and not datamodule.source.records("test"):
        log.warning("run_test: data.source has no test split; Trainer.test skipped")
    elif cfg.run_test:
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        save_metrics()

    if cfg.evaluate_after and trainer.is_global_zero:
        device = resolve_device(cfg.eval_device)
        # Sharded (FSDP) weights are read back from the full state dict in last.ckpt onto one device.
        model = load_checkpoint(ckpt)[0] if is_sharded(module.model) else module.model
        model = model.to(device).eval()
        scorer = ClipScorer(
            model, spec.image_transform(), spec.tokenizer(), device=device, batch_size=cfg.eval_batch_size
        )
        with module.compile_spec.eager_unless(training=False):  # compiled blocks run eagerly for the scorer
            report = run_benchmarks(
                scorer,
                instantiate_benchmarks(cfg.get("benchmark")),
                out_dir / "eval",
                context=eval_context(run_cfg, datamodule.source),
                model_info=(spec.name, str(ckpt)),
            )
        metrics.update({f"eval/{k}": v for k, v in report["results"].items()})
        print(markdown_table(report["results"], report["chance"], report["counts"]))
        for lg in loggers:
            lg.log_metrics({f"eval/{k}": v for k, v in report["results"].items()}, step=trainer.global_step)
            if isinstance(lg, L.pytorch.loggers.WandbLogger):  # score table, bar chart, failure cases
                log_eval_media(lg.experiment, report)

    save_metrics()
    if trainer.is_global_zero:
        keys = ("val/r_mean", "val/i2t_r1", "val/t2i_r1", "test/i2t_r1", "test/t2i_r1")
        print("final: " + ", ".join(f"{k}={metrics[k]:.2f}" for k in keys if k in metrics))
        print(f"run dir: {out_dir}")
    return metrics
