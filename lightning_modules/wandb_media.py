"""W&B media beyond scalars (active only when the run has a `WandbLogger`):

- `NegativesTable` (callback): at the start of training and after every validation, a table of training items with
  their hard negatives as the generators make them: the image, the caption, each negative caption with its kind,
  each edited image (`wandb.Image`) with the caption it was made to match. Key `train/negatives`.
- `log_eval_media(run, report)`: the evaluation as one long table (benchmark, subset, metric, score, chance, n), a
  bar chart of the headline metrics and a table of failure cases (images included). Keys `eval/table`,
  `eval/bar`, `eval/failures`. Used at the end of a training run and by `evaluate.py log_wandb=true`.

Offline by default (`WANDB_MODE`); tests read the run folder back (`tests/helpers.read_wandb_offline`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from PIL import Image

from datamodules.records import load_image

log = logging.getLogger(__name__)

NEGATIVE_COLUMNS = [
    "id",
    "image",
    "caption",
    "kind",
    "modality",
    "negative_caption",
    "negative_image",
    "matches",
]


def negative_rows(dataset: Any, num_items: int) -> list[dict[str, Any]]:
    """One row per (item, hard negative) for the first `num_items` records of a `ClipDataset`, made by its generators
    with the per-record RNG the loader uses (so the rows show what training sees for these records). An item whose
    generators made nothing gets one row with empty negative fields."""
    rows: list[dict[str, Any]] = []
    for rec in dataset.records[:num_items]:
        try:
            image = load_image(rec.image)
        except (
            OSError,
            ValueError,
        ) as e:  # an unreadable image is the loader's business; skip it here, say so
            log.warning("negatives table: record %s skipped: %s", rec.id, e)
            continue
        negs = []
        for gen in dataset.negatives:
            made = gen(rec, image, gen.rng(dataset.seed, rec))
            gen.pop_stats()  # these calls are not training's: keep them out of the logged counters
            negs.extend(made)
        texts = [n.payload for n in negs if n.modality == "text"]
        base = {"id": rec.id, "image": image, "caption": rec.caption}
        if not negs:
            rows.append(
                base
                | {"kind": "", "modality": "", "negative_caption": "", "negative_image": None, "matches": ""}
            )
        for n in negs:
            row = base | {
                "kind": n.kind,
                "modality": n.modality,
                "negative_caption": "",
                "negative_image": None,
                "matches": "",
            }
            if n.modality == "text":
                row["negative_caption"] = n.payload
            else:
                row["negative_image"] = n.payload
                # `pair` indexes the text negatives of the same generator call; shown as the caption it matches
                if n.pair is not None and 0 <= n.pair < len(texts):
                    row["matches"] = texts[n.pair]
            rows.append(row)
    return rows


def wandb_run(trainer: L.Trainer) -> Any:
    """The W&B run of the trainer's first WandbLogger, or None."""
    for lg in trainer.loggers:
        if isinstance(lg, L.pytorch.loggers.WandbLogger):
            return lg.experiment
    return None


class NegativesTable(L.Callback):
    """Args: num_items: training records shown (rows = their negatives); key: the W&B key."""

    def __init__(self, num_items: int = 8, key: str = "train/negatives") -> None:
        self.num_items = num_items
        self.key = key

    def _log(self, trainer: L.Trainer) -> None:
        run = wandb_run(trainer)
        if run is None or not trainer.is_global_zero or trainer.datamodule is None:
            return
        import wandb

        dataset = trainer.datamodule.dataset("train")
        if not dataset.negatives:
            return
        table = wandb.Table(columns=NEGATIVE_COLUMNS)
        rows = negative_rows(dataset, self.num_items)
        for r in rows:
            table.add_data(
                r["id"],
                wandb.Image(r["image"]),
                r["caption"],
                r["kind"],
                r["modality"],
                r["negative_caption"],
                wandb.Image(r["negative_image"]) if r["negative_image"] is not None else None,
                r["matches"],
            )
        # Images also as a captioned list: offline runs drop images inside tables (wandb issue #4611; the cells
        # read "Image"), lists of images are kept (files/media/images) and sync.
        images = _image_list(rows)
        run.log({self.key: table, f"{self.key}_images": images, "trainer/global_step": trainer.global_step})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer)


def _image_list(rows: list[dict[str, Any]], limit: int = 32) -> list[Any]:
    """Each item's image once, then every edited image, captioned, as `wandb.Image`s."""
    import wandb

    out, seen = [], set()
    for r in rows:
        if r["id"] not in seen:
            seen.add(r["id"])
            out.append(wandb.Image(r["image"], caption=f"{r['id']}: {r['caption']}"))
        if r["negative_image"] is not None:
            out.append(wandb.Image(r["negative_image"], caption=f"{r['kind']} (matches: {r['matches']})"))
    return out[:limit]


def _caption(bench: str, failure: dict[str, Any]) -> str:
    """A failure case in one line: its non-image fields, scores with 3 decimals."""
    parts = [
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in failure.items()
        if not isinstance(v, Image.Image)
    ]
    return f"{bench}: " + "; ".join(parts)


def _headline(key: str) -> bool:
    """Metrics shown in the bar chart: per-benchmark means and Winoground group scores (not every subset)."""
    parts = key.split("/")
    return parts[1] in ("mean", "heldout_mean", "macro") or parts[-1] == "group" or parts[0] != "synthetic"


def log_eval_media(run: Any, report: dict[str, Any], prefix: str = "eval", step: int | None = None) -> None:
    """Logs a benchmark report (`runner.run_benchmarks`) as W&B media: long score table, bar chart, failures."""
    import wandb

    results, chance, counts = report["results"], report.get("chance", {}), report.get("counts", {})
    table = wandb.Table(columns=["benchmark", "subset", "metric", "score", "chance", "n", "label"])
    for key, value in results.items():
        bench, subset, metric = key.split("/", 2)
        table.add_data(bench, subset, metric, float(value), chance.get(key), counts.get(key), key)
    payload: dict[str, Any] = {f"{prefix}/table": table}
    bars = wandb.Table(
        columns=["label", "score"], data=[[k, float(v)] for k, v in results.items() if _headline(k)]
    )
    payload[f"{prefix}/bar"] = wandb.plot.bar(bars, "label", "score", title="evaluation (headline metrics)")
    failures = [(bench, f) for bench, items in (report.get("failures") or {}).items() for f in items]
    if failures:
        keys: list[str] = []
        for (
            _,
            f,
        ) in failures:  # the 2x2 image lists of Winoground cases are shown through their joined `image`
            keys += [k for k in f if k not in keys and k != "images"]
        ftable = wandb.Table(columns=["benchmark", *keys])
        for bench, f in failures:
            cells = []
            for k in keys:
                v = f.get(k)
                cells.append(wandb.Image(v) if isinstance(v, Image.Image) else v)
            ftable.add_data(bench, *cells)
        payload[f"{prefix}/failures"] = ftable
        shown = [(b, f) for b, f in failures if isinstance(f.get("image"), Image.Image)][:24]
        if shown:  # offline runs keep images only outside tables (see NegativesTable)
            payload[f"{prefix}/failure_images"] = [
                wandb.Image(f["image"], caption=_caption(b, f)) for b, f in shown
            ]
    run.log(payload, step=step)
