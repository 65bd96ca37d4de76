"""Evaluate a checkpoint on the configured benchmarks.

    python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python evaluate.py ckpt_path=... benchmark=[synthetic] benchmark.synthetic.num_items=500

The model is rebuilt from the config saved inside the checkpoint (loaded with `weights_only=True`). Writes
`results.json` (flat `benchmark/subset/metric` keys), `results.csv` and `results.md` (chance beside each score)
into the run directory; the last printed line names that directory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datamodules.benchmarks.base import Benchmark, ClipScorer
from lightning_modules.model_factory import ModelSpec

log = logging.getLogger(__name__)


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
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.eval(), spec, run_cfg


def run_benchmarks(
    scorer: ClipScorer, benchmarks: dict[str, Benchmark], out_dir: Path, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs every benchmark; a benchmark whose data is missing is reported and skipped, the others still run.

    Returns {"results": {bench/subset/metric: value}, "chance": {...}, "counts": {...}, "errors": {bench: msg}}.
    """
    results: dict[str, float] = {}
    chance: dict[str, float] = {}
    counts: dict[str, int] = {}
    errors: dict[str, str] = {}
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
    write_reports(out_dir, results, chance, counts, errors)
    return {"results": results, "chance": chance, "counts": counts, "errors": errors}


def markdown_table(results: dict[str, float], chance: dict[str, float], counts: dict[str, int]) -> str:
    lines = ["| benchmark | subset | metric | score (%) | chance (%) | n |", "|---|---|---|---:|---:|---:|"]
    for key, value in results.items():
        bench, subset, metric = key.split("/", 2)
        n = counts.get(f"{bench}/{subset}", "")
        ch = chance.get(key, math.nan)
        lines.append(f"| {bench} | {subset} | {metric} | {value:.2f} | {ch:.2f} | {n} |")
    return "\n".join(lines)


def write_reports(
    out_dir: Path,
    results: dict[str, float],
    chance: dict[str, float],
    counts: dict[str, int],
    errors: dict[str, str],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=False))
    with (out_dir / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["benchmark", "subset", "metric", "score", "chance", "n"])
        for key, value in results.items():
            bench, subset, metric = key.split("/", 2)
            w.writerow(
                [
                    bench,
                    subset,
                    metric,
                    f"{value:.4f}",
                    chance.get(key, ""),
                    counts.get(f"{bench}/{subset}", ""),
                ]
            )
    md = markdown_table(results, chance, counts)
    if errors:
        md += "\n\nSkipped benchmarks:\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items())
    (out_dir / "results.md").write_text(md + "\n")


def instantiate_benchmarks(cfg_benchmarks: DictConfig | dict | None) -> dict[str, Benchmark]:
    if not cfg_benchmarks:
        return {}
    return {name: instantiate(node) for name, node in cfg_benchmarks.items() if node is not None}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Scores the checkpoint `cfg.ckpt_path` on `cfg.benchmark`; returns the flat results dict."""
    model, spec, run_cfg = load_checkpoint(cfg.ckpt_path)
    device = resolve_device(cfg.device)
    scorer = ClipScorer(
        model.to(device), spec.image_transform(), spec.tokenizer(), device=device, batch_size=cfg.batch_size
    )
    out_dir = Path(cfg.paths.output_dir)
    report = run_benchmarks(
        scorer, instantiate_benchmarks(cfg.benchmark), out_dir, context={"run_config": run_cfg}
    )
    (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / ".hydra" / "config.yaml", resolve=True)
    print(markdown_table(report["results"], report["chance"], report["counts"]))
    print(f"run dir: {out_dir}")
    return report["results"]


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
