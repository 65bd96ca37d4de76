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
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.benchmarks.base import Benchmark, ClipScorer
from datamodules.benchmarks.report import (
    bar_plots,
    comparison_table,
    failures_html,
    markdown_table,
    write_tables,
)
from lightning_modules.model_factory import ModelSpec, checkpoint_model_state

log = logging.getLogger(__name__)
__all__ = ["evaluate", "load_checkpoint", "markdown_table", "resolve_device", "run_benchmarks"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: expected auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, ModelSpec, dict]:
    """Rebuilds the open_clip model of a train.py checkpoint. Returns (model in eval mode, spec, run config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: checkpoint not found: '{path}'")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    run_cfg = (ckpt.get("hyper_parameters") or {}).get("run_config")
    if not run_cfg or "model" not in run_cfg:
        raise ValueError(f"ckpt_path: '{path}' has no saved run config; was it written by train.py?")
    # Built directly, not through `instantiate`: a checkpoint's config is data, and `_target_` would be code.
    spec = ModelSpec(**{k: v for k, v in run_cfg["model"].items() if not k.startswith("_")})
    # The checkpoint holds all weights: build at random init, keeping the activation the weights were trained with.
    spec = replace(spec, pretrained=None, quick_gelu=spec.force_quick_gelu)
    model = spec.build()
    model.load_state_dict(checkpoint_model_state(ckpt), strict=True)
    return model.eval(), spec, run_cfg


def run_benchmarks(
    scorer: ClipScorer, benchmarks: dict[str, Benchmark], out_dir: Path, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs every benchmark and writes the per-model reports into `out_dir`.

    Returns {"results": {bench/subset/metric: value}, "chance", "counts", "errors": {bench: msg}, "notes"}.
    """
    results: dict[str, float] = {}
    chance: dict[str, float] = {}
    counts: dict[str, int] = {}
    errors: dict[str, str] = {}
    notes: dict[str, str] = {}
    failures: dict[str, list] = {}
    for key, bench in benchmarks.items():
        name = getattr(bench, "name", key)
        try:
            res = bench.run(scorer, context=context)
        except FileNotFoundError as e:
            log.error("benchmark %s skipped: %s", name, e)
            errors[name] = str(e)
            continue
        results.update({f"{name}/{k}": v for k, v in res.metrics.items()})
        chance.update({f"{name}/{k}": v for k, v in res.chance.items()})
        counts.update({f"{name}/{k}": v for k, v in res.counts.items()})
        notes.update({f"{name}/{k}": v for k, v in res.notes.items()})
        if res.failures:
            failures[name] = res.failures
    write_tables(out_dir, results, chance, counts, errors, notes)
    if results:
        bar_plots(out_dir, {"model": results}, chance)
    failures_html(out_dir, failures)
    return {"results": results, "chance": chance, "counts": counts, "errors": errors, "notes": notes}


def instantiate_benchmarks(cfg_benchmarks: DictConfig | dict | None) -> dict[str, Benchmark]:
    if not cfg_benchmarks:
        return {}
    return {name: instantiate(node) for name, node in cfg_benchmarks.items() if node is not None}


def models_from_config(cfg: DictConfig) -> dict[str, tuple[torch.nn.Module, ModelSpec, dict]]:
    """label -> (model, spec, run config) from `ckpt_path` (one or a list) and/or `open_clip.name`."""
    out: dict[str, tuple] = {}
    paths = cfg.get("ckpt_path")
    paths = list(paths) if isinstance(paths, (list, ListConfig)) else ([paths] if paths else [])
    for p in paths:
        label = Path(p).parent.parent.name if Path(p).parent.name == "checkpoints" else Path(p).stem
        while label in out:
            label += "'"
        out[label] = load_checkpoint(p)
    oc = cfg.get("open_clip") or {}
    if oc.get("name"):
        spec = ModelSpec(
            name=oc.name, pretrained=oc.get("pretrained"), quick_gelu=oc.get("quick_gelu", "auto")
        )
        out[f"{oc.name}:{Path(str(oc.get('pretrained'))).name}"] = (spec.build().eval(), spec, {})
    if not out:
        raise ValueError("nothing to evaluate: set ckpt_path=<file or list> or open_clip.name=<architecture>")
    return out


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Scores every configured model on `cfg.benchmark`. Returns the flat results of the single model, or
    {label: results} when several models are compared."""
    device = resolve_device(cfg.device)
    models = models_from_config(cfg)
    benches = instantiate_benchmarks(cfg.benchmark)
    out_dir = Path(cfg.paths.output_dir)
    per_model: dict[str, dict[str, float]] = {}
    chance: dict[str, float] = {}
    for label, (model, spec, run_cfg) in models.items():
        scorer = ClipScorer(
            model.to(device),
            spec.image_transform(),
            spec.tokenizer(),
            device=device,
            batch_size=cfg.batch_size,
        )
        sub = out_dir if len(models) == 1 else out_dir / label
        report = run_benchmarks(scorer, benches, sub, context={"run_config": run_cfg})
        per_model[label] = report["results"]
        chance.update(report["chance"])
        print(f"## {label}\n" + markdown_table(report["results"], report["chance"], report["counts"]))
        model.cpu()
    if len(models) > 1:
        table = comparison_table(per_model, chance)
        (out_dir / "comparison.md").write_text(table + "\n")
        bar_plots(out_dir, per_model, chance)
        print(table)
    if cfg.get("log_wandb"):
        log_to_wandb(cfg, per_model)
    (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / ".hydra" / "config.yaml", resolve=True)
    print(f"run dir: {out_dir}")
    return next(iter(per_model.values())) if len(per_model) == 1 else per_model


def log_to_wandb(cfg: DictConfig, per_model: dict[str, dict[str, float]]) -> None:
    import wandb

    run = wandb.init(
        project=cfg.wandb.project,
        name=cfg.wandb.get("name"),
        job_type="evaluate",
        mode=cfg.wandb.mode,
        dir=str(cfg.paths.output_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    try:
        keys = list(dict.fromkeys(k for r in per_model.values() for k in r))
        table = wandb.Table(columns=["model", *keys])
        for label, res in per_model.items():
            table.add_data(label, *[res.get(k) for k in keys])
        run.log(
            {
                "eval/table": table,
                **{f"eval/{label}/{k}": v for label, r in per_model.items() for k, v in r.items()},
            }
        )
    finally:
        wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
