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


def _is_aggregate(subset: str, subsets: list[str]) -> bool:
    """Means and micro/macro summaries (mean, heldout_mean, macro, SugarCrepe's add/replace/swap over subsets)."""
    return (
        subset.endswith("mean")
        or subset in ("all", "macro", "micro")
        or any(o.startswith(subset + "_") for o in subsets if o != subset)
    )


def plot_panels(keys: list[str]) -> list[tuple[str, list[str]]]:
    """A benchmark's `bench/subset/metric` keys split into panels: categories (each held-out subset right after its
    base subset), aggregates, Winoground (text/image/group). Empty panels are left out."""
    subsets = [k.split("/")[1] for k in keys]
    wino = [k for k in keys if k.split("/")[1].startswith("winoground")]
    agg = [k for k in keys if k not in wino and _is_aggregate(k.split("/")[1], subsets)]
    cats = [k for k in keys if k not in wino and k not in agg]
    bases = list(dict.fromkeys(k.split("/")[1].removesuffix("-heldout") for k in cats))
    cats.sort(
        key=lambda k: (
            bases.index(k.split("/")[1].removesuffix("-heldout")),
            k.split("/")[1].endswith("-heldout"),
        )
    )
    panels = [("categories", cats), ("aggregates", agg), ("Winoground (text / image / group)", wino)]
    return [(title, ks) for title, ks in panels if ks]


def bar_plots(out_dir: Path, per_model: dict[str, dict[str, float]], chance: dict[str, float]) -> list[Path]:
    """One PNG per benchmark: horizontal bars in panels (categories with each held-out subset beside its base,
    hatched; aggregates; Winoground), one colour per model (legend = the model labels), the score printed at each
    bar, chance as a black tick per row."""
    paths = []
    models = list(per_model)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    benches = sorted({k.split("/", 1)[0] for r in per_model.values() for k in r})
    for bench in benches:
        keys = list(dict.fromkeys(k for r in per_model.values() for k in r if k.startswith(bench + "/")))
        panels = plot_panels(keys)
        heights = [len(ks) * (0.22 * len(models) + 0.12) + 0.6 for _, ks in panels]
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(8.5, sum(heights) + 0.6),
            gridspec_kw={"height_ratios": heights},
            squeeze=False,
        )
        bar_h = 0.8 / len(models)
        for ax, (title, ks) in zip(axes[:, 0], panels):
            for m, name in enumerate(models):
                ys = [i + (m - (len(models) - 1) / 2) * bar_h for i in range(len(ks))]
                vals = [per_model[name].get(k, float("nan")) for k in ks]
                bars = ax.barh(ys, vals, height=bar_h, color=colours[m % len(colours)], label=name)
                for bar, k in zip(bars, ks):
                    if k.split("/")[1].endswith("-heldout"):
                        bar.set_hatch("///")
                        bar.set_edgecolor("white")
                for y, v in zip(ys, vals):
                    if v == v:  # not NaN
                        ax.text(v + 0.8, y, f"{v:.1f}", va="center", fontsize=7)
            for i, k in enumerate(ks):
                if k in chance:
                    ax.vlines(chance[k], i - 0.45, i + 0.45, colors="black", linewidth=1.2)
            ax.set_yticks(range(len(ks)))
            ax.set_yticklabels(
                [k.split("/", 1)[1].replace("-heldout/", " (held-out)/") for k in ks], fontsize=8
            )
            ax.invert_yaxis()
            ax.set_xlim(0, 108)
            ax.set_title(title, fontsize=9, loc="left")
            ax.grid(axis="x", alpha=0.3)
        axes[0, 0].set_title(
            f"{bench} — {axes[0, 0].get_title(loc='left')}  (black tick: chance; hatched: held-out)",
            fontsize=9,
            loc="left",
        )
        axes[-1, 0].set_xlabel("score (%)")
        if len(models) > 1:
            axes[0, 0].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out_dir / f"plot_{bench}.png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _img_tag(image: Any, width: int = 160) -> str:
    if image is None:
        return ""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" width="{width}">'


def _totals(bench: str, results: dict[str, float], counts: dict[str, int], shown: dict[str, int]) -> str:
    """Per-subset totals of one benchmark: items, accuracy, wrong, failure cases shown."""
    rows = []
    for key, value in results.items():
        b, subset, metric = key.split("/", 2)
        n = counts.get(f"{b}/{subset}")
        if b != bench or metric != "acc" or n is None:
            continue
        wrong = round(n * (1 - value / 100))
        flag = " <span class='held'>held-out</span>" if subset.endswith("-heldout") else ""
        rows.append(
            f"<tr><td>{html.escape(subset)}{flag}</td><td>{n}</td><td>{value:.1f}%</td><td>{wrong}</td>"
            f"<td>{shown.get(subset, 0)}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<table class='totals'><tr><th>subset</th><th>items</th><th>accuracy</th><th>wrong</th><th>shown</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _winoground_card(c: dict[str, Any]) -> str:
    """A Winoground failure as its 2x2: both images, both captions, every caption-image score."""
    s = c["scores"]  # s[caption][image]
    cells = "".join(
        f"<td>{_img_tag(img, 128)}<br>"
        + "<br>".join(
            f"<span class='{'pos' if ci == ii else 'neg'}'>caption {ci}: {s[ci][ii]:.4f}</span>"
            for ci in range(2)
        )
        + "</td>"
        for ii, img in enumerate(c["images"])
    )
    caps = "".join(f"<li>{html.escape(t)}</li>" for t in c["captions"])
    return (
        f"<div class='card'><b>{html.escape(str(c.get('subset', '')))}</b> — margin {c.get('margin', 0):+.4f}"
        f"<table><tr>{cells}</tr></table><ol start='0'>{caps}</ol></div>"
    )


def failures_html(
    out_dir: Path,
    failures: dict[str, list[dict[str, Any]]],
    results: dict[str, float] | None = None,
    counts: dict[str, int] | None = None,
    title: str = "Failure cases",
) -> Path:
    """A self-contained HTML page (images inlined): per benchmark, the per-subset totals, then the failure cases
    sorted by margin (how much the wrong caption won by), held-out ones flagged; Winoground-style failures as 2x2
    cards (both images, both captions, all four scores)."""
    results, counts = results or {}, counts or {}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "td,th{padding:5px 8px;vertical-align:top;border-bottom:1px solid #ddd;text-align:left}"
        ".pos{color:#176317}.neg{color:#a31515}.held{background:#fde68a;padding:1px 5px;border-radius:4px;"
        "font-size:85%}.totals td{text-align:right}.totals td:first-child{text-align:left}"
        ".card{display:inline-block;border:1px solid #ccc;border-radius:6px;margin:6px;padding:8px;"
        "vertical-align:top;max-width:330px}.card td{border:none}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for bench, cases in failures.items():
        pairs = sorted((c for c in cases if "images" not in c), key=lambda c: -c.get("margin", 0.0))
        wino = sorted((c for c in cases if "images" in c), key=lambda c: -c.get("margin", 0.0))
        shown: dict[str, int] = {}
        for c in cases:  # a held-out case counts for its base subset and for the held-out subset
            for sub in [str(c.get("subset", ""))] + (
                [f"{c.get('subset')}-heldout"] if c.get("heldout") else []
            ):
                shown[sub] = shown.get(sub, 0) + 1
        parts.append(f"<h2>{html.escape(bench)}</h2>")
        parts.append(_totals(bench, results, counts, shown))
        if pairs:
            parts.append(f"<h3>caption pairs ({len(pairs)} shown, most confidently wrong first)</h3><table>")
            parts.append(
                "<tr><th>image</th><th>subset</th><th>positive (score)</th><th>chosen negative (score)</th>"
                "<th>margin</th></tr>"
            )
            for c in pairs:
                sub = str(c.get("subset", ""))
                flag = (
                    " <span class='held'>held-out</span>"
                    if c.get("heldout") or sub.endswith("-heldout")
                    else ""
                )
                parts.append(
                    f"<tr><td>{_img_tag(c.get('image'))}</td><td>{html.escape(sub)}{flag}</td>"
                    f"<td class='pos'>{html.escape(c['positive'])}<br>({c['score_pos']:.4f})</td>"
                    f"<td class='neg'>{html.escape(c['negative'])}<br>({c['score_neg']:.4f})</td>"
                    f"<td>{c.get('margin', c['score_neg'] - c['score_pos']):+.4f}</td></tr>"
                )
            parts.append("</table>")
        if wino:
            parts.append(f"<h3>Winoground 2&times;2 ({len(wino)} shown; green: the matching caption)</h3>")
            parts.extend(_winoground_card(c) for c in wino)
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
