"""The benchmark runner: builds the configured benchmarks, scores one or several models on them and writes the
reports (results.{json,csv,md}, plots, failures.html; comparison.md for several models). Used by train.py after
fitting and by evaluate.py.

    benches = instantiate_benchmarks(cfg.benchmark)
    report = run_benchmarks(scorer, benches, out_dir, context={"run_config": run_cfg})
    print(markdown_table(report["results"], report["chance"], report["counts"]))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.auto import tqdm

from datamodules.atomic import atomic_write_text
from datamodules.benchmarks.base import Benchmark
from datamodules.benchmarks.report import (
    bar_plots,
    comparison_table,
    failures_html,
    markdown_table,
    write_clip_benchmark_json,
    write_tables,
)
from datamodules.sources.synthetic import world_from_run_config
from lightning_modules.inference import ClipScorer
from lightning_modules.model_factory import ModelSpec

log = logging.getLogger(__name__)
__all__ = ["compare_models", "instantiate_benchmarks", "markdown_table", "run_benchmarks"]


def instantiate_benchmarks(cfg_benchmarks: DictConfig | dict | None) -> dict[str, Benchmark]:
    """The `benchmark` config group (name -> node; null entries dropped) as Benchmark objects."""
    if not cfg_benchmarks:
        return {}
    out = {}
    for name, node in cfg_benchmarks.items():
        if node is None:
            continue
        if "_target_" not in node:
            raise ValueError(
                f"benchmark.{name}: no _target_ (only overrides of a benchmark that is not selected?); select it "
                f"with benchmark=[...,{name}] or drop its overrides"
            )
        out[name] = instantiate(node)
    return out


def run_benchmarks(
    scorer: ClipScorer,
    benchmarks: dict[str, Benchmark],
    out_dir: Path,
    context: dict[str, Any] | None = None,
    model_info: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Runs every benchmark and writes the per-model reports into `out_dir`. A benchmark whose data is missing is
    reported (logged, and under "errors") and skipped; the others still run. With `model_info` = (model, pretrained)
    the scores are also written in clip_benchmark's JSON format (`<out_dir>/clip_benchmark/*.json`).

    Returns {"results": {bench/subset/metric: value}, "chance", "counts", "errors": {bench: msg}, "notes",
    "failures": {bench: [failure dicts, PIL images included]}}. A progress bar per benchmark counts the images and
    captions encoded (on a terminal).
    """
    results: dict[str, float] = {}
    chance: dict[str, float] = {}
    counts: dict[str, int] = {}
    errors: dict[str, str] = {}
    notes: dict[str, str] = {}
    failures: dict[str, list] = {}
    for key, bench in benchmarks.items():
        name = getattr(bench, "name", key)
        bar = tqdm(desc=f"eval {name}", unit=" encoded", disable=None, leave=False, dynamic_ncols=True)
        scorer.progress = bar
        t0 = time.perf_counter()
        try:
            res = bench.run(scorer, context=context)
        except FileNotFoundError as e:
            log.error("benchmark %s skipped: %s", name, e)
            errors[name] = str(e)
            continue
        finally:
            bar.close()
            scorer.progress = None
        log.info("benchmark %s: %d scores in %.1f s", name, len(res.metrics), time.perf_counter() - t0)
        results.update({f"{name}/{k}": v for k, v in res.metrics.items()})
        chance.update({f"{name}/{k}": v for k, v in res.chance.items()})
        counts.update({f"{name}/{k}": v for k, v in res.counts.items()})
        notes.update({f"{name}/{k}": v for k, v in res.notes.items()})
        if res.failures:
            failures[name] = res.failures
    write_tables(out_dir, results, chance, counts, errors, notes)
    if model_info is not None and results:
        write_clip_benchmark_json(out_dir, results, *model_info)
    if results:
        bar_plots(out_dir, {"model": results}, chance)
    failures_html(out_dir, failures, results, counts)
    return {
        "results": results,
        "chance": chance,
        "counts": counts,
        "errors": errors,
        "notes": notes,
        "failures": failures,
    }


def compare_models(
    models: dict[str, tuple[torch.nn.Module, ModelSpec, dict]],
    benchmarks: dict[str, Benchmark],
    out_dir: Path,
    *,
    device: torch.device,
    batch_size: int = 256,
    reports: dict[str, dict] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores each model (label -> (model, spec, run config)) on `benchmarks` (the synthetic benchmark on the world
    rebuilt from each run config), one report folder per model (the
    run folder itself for a single model), plus comparison.md and plots for several. Prints each table.
    Returns label -> flat results; `reports` (if given) receives label -> the full report of `run_benchmarks`."""
    per_model: dict[str, dict[str, float]] = {}
    chance: dict[str, float] = {}
    for label, (model, spec, run_cfg) in models.items():
        scorer = ClipScorer(
            model.to(device), spec.image_transform(), spec.tokenizer(), device=device, batch_size=batch_size
        )
        sub = out_dir if len(models) == 1 else out_dir / label
        world, size = world_from_run_config(run_cfg)
        context = {"run_config": run_cfg, "world": world, "image_size": size}
        report = run_benchmarks(scorer, benchmarks, sub, context=context, model_info=(spec.name, label))
        per_model[label] = report["results"]
        if reports is not None:
            reports[label] = report
        chance.update(report["chance"])
        print(f"## {label}\n" + markdown_table(report["results"], report["chance"], report["counts"]))
        model.cpu()
    if len(models) > 1:
        table = comparison_table(per_model, chance)
        atomic_write_text(out_dir / "comparison.md", table + "\n")
        bar_plots(out_dir, per_model, chance)
        print(table)
    return per_model
