"""Evaluation reports: results.json (flat `benchmark/subset/metric`), results.csv, results.md (chance beside each
score), one bar plot per benchmark, and failures.html (image, positive and negative caption, both scores).
Several models give one side-by-side table and plot."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from datamodules.atomic import atomic_open, atomic_write_text


def markdown_table(results: dict[str, float], chance: dict[str, float], counts: dict[str, int]) -> str:
    lines = ["| benchmark | subset | metric | score (%) | chance (%) | n |", "|---|---|---|---:|---:|---:|"]
    for key, value in results.items():
        bench, subset, metric = key.split("/", 2)
        n = counts.get(f"{bench}/{subset}", "")
        lines.append(
            f"| {bench} | {subset} | {metric} | {value:.2f} | {chance.get(key, math.nan):.2f} | {n} |"
        )
    return "\n".join(lines)


def comparison_table(per_model: dict[str, dict[str, float]], chance: dict[str, float]) -> str:
    names = list(per_model)
    keys = list(dict.fromkeys(k for r in per_model.values() for k in r))
    lines = [
        "| benchmark/subset/metric | " + " | ".join(names) + " | chance |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for k in keys:
        vals = " | ".join(f"{per_model[n][k]:.2f}" if k in per_model[n] else "–" for n in names)
        lines.append(f"| {k} | {vals} | {chance.get(k, math.nan):.2f} |")
    return "\n".join(lines)


def write_tables(
    out_dir: Path,
    results: dict[str, float],
    chance: dict[str, float],
    counts: dict[str, int],
    errors: dict[str, str],
    notes: dict[str, str],
) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    with atomic_open(out_dir / "results.csv", "w", newline="") as f:
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
    if notes:
        md += "\n\nNotes:\n" + "\n".join(f"- {k}: {v}" for k, v in notes.items())
    if errors:
        md += "\n\nSkipped benchmarks:\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items())
    atomic_write_text(out_dir / "results.md", md + "\n")
    return md


def bar_plots(out_dir: Path, per_model: dict[str, dict[str, float]], chance: dict[str, float]) -> list[Path]:
    """One PNG per benchmark: a bar per (subset/metric), one colour per model, chance as black ticks."""
    paths = []
    benches = sorted({k.split("/", 1)[0] for r in per_model.values() for k in r})
    for bench in benches:
        keys = list(dict.fromkeys(k for r in per_model.values() for k in r if k.startswith(bench + "/")))
        fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(keys) * len(per_model) + 2), 3.6))
        width = 0.8 / len(per_model)
        for m, (name, res) in enumerate(per_model.items()):
            xs = [i + m * width for i in range(len(keys))]
            ax.bar(xs, [res.get(k, 0.0) for k in keys], width=width, label=name)
        for i, k in enumerate(keys):
            if k in chance:
                ax.hlines(
                    chance[k], i - width / 2, i + width * (len(per_model) - 0.5), colors="black", linewidth=1
                )
        ax.set_xticks([i + width * (len(per_model) - 1) / 2 for i in range(len(keys))])
        ax.set_xticklabels([k.split("/", 1)[1] for k in keys], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("%")
        ax.set_title(f"{bench} (black: chance)")
        if len(per_model) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"plot_{bench}.png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _img_tag(image: Any) -> str:
    if image is None:
        return ""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" width="160">'


def failures_html(
    out_dir: Path, failures: dict[str, list[dict[str, Any]]], title: str = "Failure cases"
) -> Path:
    """A self-contained HTML page (images inlined) of the cases each benchmark got wrong."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}td{padding:6px;vertical-align:top;border-bottom:1px solid #ddd}"
        ".pos{color:#176317}.neg{color:#a31515}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for bench, cases in failures.items():
        parts.append(f"<h2>{html.escape(bench)} ({len(cases)} shown)</h2><table>")
        parts.append(
            "<tr><th>image</th><th>subset</th><th>positive (score)</th><th>chosen negative (score)</th></tr>"
        )
        for c in cases:
            parts.append(
                f"<tr><td>{_img_tag(c.get('image'))}</td><td>{html.escape(str(c.get('subset', '')))}</td>"
                f"<td class='pos'>{html.escape(c['positive'])}<br>({c['score_pos']:.4f})</td>"
                f"<td class='neg'>{html.escape(c['negative'])}<br>({c['score_neg']:.4f})</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    path = out_dir / "failures.html"
    atomic_write_text(path, "\n".join(parts))
    return path


CLIP_BENCHMARK_TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


def write_clip_benchmark_json(
    out_dir: Path, results: dict[str, float], model: str, pretrained: str
) -> list[Path]:
    """Writes `clip_benchmark/<dataset>.json` per benchmark subset in clip_benchmark's result format
    ({"dataset", "model", "pretrained", "task", "metrics", "language"}; scores as fractions), so `clip_benchmark
    build <dir>` merges them with clip_benchmark's own results. SugarCrepe subsets are named as clip_benchmark names
    them (`sugar_crepe/<subset>`, metrics `acc` and `text_acc`: one image, two captions, so the two coincide);
    other benchmarks as `hardneg/<benchmark>/<subset>`."""
    per_dataset: dict[str, dict[str, Any]] = {}
    for key, value in results.items():
        bench, subset, metric = key.split("/", 2)
        if bench == "sugarcrepe" and subset in (
            "add_att",
            "add_obj",
            "replace_att",
            "replace_obj",
            "replace_rel",
            "swap_att",
            "swap_obj",
        ):
            dataset, metrics = f"sugar_crepe/{subset}", {metric: value / 100, "text_acc": value / 100}
        else:
            dataset, metrics = f"hardneg/{bench}/{subset}", {metric: value / 100}
        task = next(
            (t for prefix, t in CLIP_BENCHMARK_TASKS.items() if bench.startswith(prefix)),
            "image_caption_selection",
        )
        entry = per_dataset.setdefault(
            dataset,
            {
                "dataset": dataset,
                "model": model,
                "pretrained": pretrained,
                "task": task,
                "metrics": {},
                "language": "en",
            },
        )
        entry["metrics"] |= metrics
    folder = Path(out_dir) / "clip_benchmark"
    paths = []
    for dataset, entry in per_dataset.items():
        path = folder / (dataset.replace("/", "_") + ".json")
        atomic_write_text(path, json.dumps(entry, indent=1))
        paths.append(path)
    return paths
