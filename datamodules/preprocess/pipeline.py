"""Raw records -> trusted pairs (source paper §4).

1. validate every record: duplicate ids, missing / unreadable / too small / too large images, empty or invalid
   captions are skipped and counted with their reason;
2. `produce` stages in config order (e.g. caption lone images, draw lone texts); an item still without a caption
   or an image afterwards is dropped with its reason;
3. the gate scores every pair; a pair below the threshold goes to the `repair` stages (the VLM looks again at the
   image and revises the caption) and is gated again, up to `repair_rounds` rounds, then dropped with its reason;
4. rank 0 writes `<split>.jsonl` (image, caption, id, source, provenance, gate scores), `images/<split>/` (images
   that exist only in memory: generated, rendered or read from shards; file images keep their path),
   `report_<split>.json` / `.md` (counts kept / repaired / captioned / generated / dropped with reasons, per-stage
   seconds and model calls, gate-score histogram) and `gate_scores_<split>.png`.

The run proves that every input record is accounted for: output + dropped == input, or it raises.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.atomic import atomic_open, atomic_write_text
from datamodules.gate import Gate
from datamodules.preprocess.stages.base import Item, Stage, StageContext, normalize_text
from datamodules.records import ImageRef, Record, load_image

log = logging.getLogger(__name__)


def _as_list(stages: Sequence[Stage] | dict[str, Stage] | None) -> list[Stage]:
    if stages is None:
        return []
    if isinstance(stages, dict) or hasattr(stages, "items"):
        return [s for s in stages.values() if s is not None]
    return [s for s in stages if s is not None]


def image_file_name(record_id: str) -> str:
    """A file name for a record's image: readable (the id, sanitised, shortened) and collision-free (a hash of the
    exact id), so ids such as 'a/b', 'a_b' and 'a b' never share a file."""
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in record_id)[:80]
    return f"{readable}-{hashlib.sha256(record_id.encode('utf-8')).hexdigest()[:12]}.png"


class Preprocessor:
    """Args:
    gate: the calibrated similarity gate; None keeps every pair (the "raw data" baseline).
    stages: the stages (a list, or the `stages` dict of the config in config order).
    repair_rounds: look-again rounds for a pair that fails the gate.
    min_side / max_pixels: image size limits (outside: skipped as too small / too large).
    cache_dir: cache of model outputs (shared by ranks).
    batch_size: gate scoring batch; stage_batch_size: model batch of the stages.
    seed: base seed of every per-item RNG.
    rank / world_size / barrier: distributed split of the stages' model calls (rank 0 writes the outputs).
    attention: optional visual-attention meter (`score(images, captions) -> tensor` of the share of a VLM's
        attention on the image while it reads the caption, e.g. `datamodules.preprocess.vlm.AttentionScorer`);
        a pair whose share is below `attention_threshold` fails like a gate rejection and goes to the repair /
        reflect stages (Reflection-V: a caption written without looking at the image). Needs a gate.
    """

    def __init__(
        self,
        gate: Gate | None,
        stages: Sequence[Stage] | dict[str, Stage] | None = None,
        *,
        repair_rounds: int = 2,
        min_side: int = 8,
        max_pixels: int = 50_000_000,
        cache_dir: str | None = None,
        batch_size: int = 256,
        stage_batch_size: int = 32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
        attention: Any = None,
        attention_threshold: float | None = None,
    ) -> None:
        if (attention is None) != (attention_threshold is None):
            raise ValueError(
                "preprocess.attention and preprocess.attention_threshold go together (set both or neither)"
            )
        self.attention, self.attention_threshold = attention, attention_threshold
        self.gate = gate
        self.stages = _as_list(stages)
        for s in self.stages:
            if getattr(s, "phase", None) not in ("produce", "repair"):
                raise ValueError(
                    f"stage {s!r}: phase must be 'produce' or 'repair', got {getattr(s, 'phase', None)!r}"
                )
        if repair_rounds < 0:
            raise ValueError(f"preprocess.repair_rounds must be >= 0, got {repair_rounds}")
        self.repair_rounds, self.min_side, self.max_pixels = repair_rounds, min_side, max_pixels
        self.batch_size = batch_size
        self.ctx_args = dict(
            cache_dir=cache_dir,
            seed=seed,
            batch_size=stage_batch_size,
            rank=rank,
            world_size=world_size,
            barrier=barrier,
        )
        self.rank = rank
        self.calls: Counter = Counter()

    # -- validation -----------------------------------------------------------------------------------------------
    def validate(self, records: list[Record], dropped: Counter) -> list[Item]:
        seen: set[str] = set()
        out = []
        for r in records:
            if r.id in seen:
                dropped["duplicate_id"] += 1
                continue
            seen.add(r.id)
            if r.caption is not None:
                if not isinstance(r.caption, str):
                    dropped["caption_not_text"] += 1
                    continue
                try:
                    r.caption.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates from undecodable bytes
                    dropped["caption_invalid_utf8"] += 1
                    continue
                if not r.caption.strip():
                    if r.image is None:
                        dropped["empty_caption_and_no_image"] += 1
                        continue
                    r.caption, r.source = None, "lone_image"  # an image with an empty caption is a lone image
                else:
                    r.caption = normalize_text(r.caption)
            image = None
            if r.image is not None:
                try:
                    if isinstance(r.image, (str, Path)) and not Path(r.image).is_file():
                        raise FileNotFoundError(r.image)
                    if isinstance(r.image, (str, Path, bytes)):
                        with Image.open(
                            r.image if not isinstance(r.image, bytes) else io.BytesIO(r.image)
                        ) as p:
                            w, h = p.size
                        if w * h > self.max_pixels:
                            dropped["image_too_large"] += 1
                            continue
                    image = load_image(r.image)
                except FileNotFoundError:
                    dropped["image_missing"] += 1
                    continue
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                    dropped["image_unreadable"] += 1
                    continue
                if min(image.size) < self.min_side:
                    dropped["image_too_small"] += 1
                    continue
                if image.size[0] * image.size[1] > self.max_pixels:
                    dropped["image_too_large"] += 1
                    continue
            if image is None and r.caption is None:
                dropped["no_image_no_caption"] += 1
                continue
            out.append(Item(r, image))
        return out

    # -- the run --------------------------------------------------------------------------------------------------
    def run(
        self,
        records: Sequence[Record],
        out_dir: str | Path,
        split: str = "train",
        *,
        skipped_by_source: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Preprocesses one split into `out_dir`. skipped_by_source: rows the raw source could not turn into records
        (reason -> count); they are listed in the split's reports beside what preprocessing dropped."""
        out_dir = Path(out_dir)
        ctx = StageContext(**self.ctx_args)
        timings: dict[str, float] = {}
        counts: Counter = Counter(input=len(records))
        dropped = ctx.dropped

        for stage in self.stages:
            if hasattr(stage, "begin_split"):
                stage.begin_split()
        t0 = time.perf_counter()
        items = self.validate(list(records), dropped)
        timings["validate"] = time.perf_counter() - t0

        for stage in (s for s in self.stages if s.phase == "produce"):
            t0 = time.perf_counter()
            n_in, d_in = len(items), sum(dropped.values())
            items = stage(items, ctx)
            if len(items) + sum(dropped.values()) - d_in != n_in:
                raise AssertionError(f"stage {stage.name} lost items without counting them")
            timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - t0
        pairs = []
        for it in items:
            if it.record.caption is None:
                ctx.drop(it, "lone_image_not_captioned")
            elif it.image is None:
                ctx.drop(it, "lone_text_not_drawn")
            else:
                pairs.append(it)

        stage_outputs: dict[str, Any] = {}
        kept, history = self._gate_and_repair(pairs, ctx, timings)
        counts.update(it.record.meta.get("produced", "kept") for it in kept)

        if self.rank == 0:
            t0 = time.perf_counter()
            rows = self._write(kept, out_dir, split)
            timings["write"] = time.perf_counter() - t0
            for stage in self.stages:  # stage artefacts, e.g. the reflect stage's traces
                if hasattr(stage, "write_outputs"):
                    stage_outputs[stage.name] = stage.write_outputs(out_dir, split, rows)
        self.calls.update(ctx.calls)
        report = {
            "split": split,
            "counts": dict(counts),
            "dropped": dict(dropped),
            "output": len(kept),
            "accounted": len(kept) + sum(dropped.values()),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "model_calls": dict(ctx.calls),
            "cache": dict(ctx.cache.stats) if ctx.cache is not None else None,
            "stages": [s.identity() for s in self.stages],
            "gate": None
            if self.gate is None
            else {"threshold": self.gate.threshold, "combine": self.gate.combine},
            "repair_rounds": self.repair_rounds,
            "attention_threshold": self.attention_threshold,
            "attention_flagged": sum(bool(it.record.meta.get("attention_flagged")) for it in pairs),
            "stage_outputs": stage_outputs,
            "rank": self.rank,
            "world_size": ctx.world_size,
        }
        if report["accounted"] != counts["input"]:
            raise AssertionError(
                f"preprocess lost records: {counts['input']} in, {report['accounted']} accounted"
            )
        if skipped_by_source:
            report["skipped_by_source"] = dict(skipped_by_source)
        if self.rank == 0:
            atomic_write_text(out_dir / f"report_{split}.json", json.dumps(report, indent=2))
            self._write_md(out_dir, split, report, history)
        return {"report": report, "kept": [it.record for it in kept], "all": [it.record for it in pairs]}

    def _gate_and_repair(
        self, pairs: list[Item], ctx: StageContext, timings: dict
    ) -> tuple[list[Item], list]:
        repairers = [s for s in self.stages if s.phase == "repair"]
        if self.gate is None:
            return pairs, []
        kept: list[Item] = []
        history: list[float] = []
        pending = pairs
        for round_ in range(self.repair_rounds + 1):
            if not pending:
                break
            t0 = time.perf_counter()
            scores = self.score_items(pending)
            passed = self.gate.passes(scores).tolist()
            if self.attention is not None:
                share = self.attention_shares(pending)
                scores["visual_share"] = share
                for k, it in enumerate(pending):
                    if passed[k] and float(share[k]) < self.attention_threshold:
                        passed[k] = False
                        it.record.meta["attention_flagged"] = True
            timings["gate"] = timings.get("gate", 0.0) + time.perf_counter() - t0
            if round_ == 0:
                history = scores["combined"].tolist()
            failed = []
            for k, (it, ok) in enumerate(zip(pending, passed)):
                r = it.record
                r.gate_scores = {name: float(v[k]) for name, v in scores.items()}
                if round_ == 0:
                    r.meta["gate_first_pass"] = bool(ok)
                if ok:
                    if round_ > 0:
                        r.meta["produced"] = "repaired"
                        r.meta["repair_rounds"] = round_
                    kept.append(it)
                elif round_ < self.repair_rounds and repairers:
                    failed.append(it)
                else:
                    ctx.drop(
                        it, "gate_failed_after_repair" if repairers and self.repair_rounds else "gate_failed"
                    )
            ctx.round = round_ + 1
            for stage in repairers:
                t0 = time.perf_counter()
                n_in, d_in = len(failed), sum(ctx.dropped.values())
                failed = stage(failed, ctx)
                if len(failed) + sum(ctx.dropped.values()) - d_in != n_in:
                    raise AssertionError(f"stage {stage.name} lost items without counting them")
                timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - t0
            pending = failed
        return kept, history

    def score_items(self, pending: list[Item]) -> dict:
        """Gate scores of the pending items ({scorer name or "combined": tensor}), in batches. A subclass may
        override it to give a gate more than images and captions (e.g. an oracle reading each record's scene)."""
        import torch

        parts: dict[str, list] = {}
        for s in range(0, len(pending), self.batch_size):
            chunk = pending[s : s + self.batch_size]
            sc = self.gate.score([it.image for it in chunk], [it.record.caption for it in chunk])
            for k, v in sc.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def attention_shares(self, pending: list[Item]):
        import torch

        parts = []
        for s in range(0, len(pending), self.batch_size):
            chunk = pending[s : s + self.batch_size]
            parts.append(
                torch.as_tensor(
                    self.attention.score([it.image for it in chunk], [it.record.caption for it in chunk]),
                    dtype=torch.float32,
                )
            )
        return torch.cat(parts) if parts else torch.zeros(0)

    # -- outputs --------------------------------------------------------------------------------------------------
    def _write(self, kept: list[Item], out_dir: Path, split: str) -> dict[str, dict]:
        """Writes the manifest and the in-memory images; returns {record id: manifest row}."""
        img_dir = out_dir / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        names: dict[str, str] = {}  # file name -> record id: ids that differ must never share a file
        rows: dict[str, dict] = {}
        with atomic_open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for it in kept:
                r = it.record
                if isinstance(r.image, (str, Path)) and not any(
                    p.get("stage") == "text_to_image" for p in r.provenance
                ):
                    image = str(Path(r.image).resolve())
                else:  # in memory (generated, rendered, bytes from a shard): write it
                    name = image_file_name(r.id)
                    if names.setdefault(name, r.id) != r.id:
                        raise ValueError(
                            f"preprocess: records {names[name]!r} and {r.id!r} map to one image file {name!r}"
                        )
                    pixels = it.image if not isinstance(it.image, ImageRef) else it.image.load()
                    with atomic_open(img_dir / name, "wb") as img_f:
                        pixels.save(img_f, format="PNG")
                    image = f"images/{split}/{name}"
                row = {
                    "id": r.id,
                    "image": image,
                    "caption": r.caption,
                    "source": r.source,
                    "provenance": r.provenance,
                    "gate_scores": r.gate_scores,
                }
                # a render of the synthetic world: the renderer editor can make I'_C from its scene graph
                scene = getattr(r.image, "scene", None)
                if scene is not None:
                    row["scene"] = scene.to_json()
                rows[r.id] = row
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return rows

    def _write_md(self, out_dir: Path, split: str, report: dict, history: list[float]) -> None:
        lines = [
            f"# Preprocessing report ({split})",
            "",
            f"input records: {report['counts'].get('input', 0)}; clean pairs written: {report['output']}",
            "",
            "| outcome | count |",
            "|---|---:|",
        ]
        for k, v in sorted(report["counts"].items()):
            if k != "input":
                lines.append(f"| {k} | {v} |")
        for k, v in sorted(report["dropped"].items()):
            lines.append(f"| dropped: {k} | {v} |")
        for k, v in sorted(report.get("skipped_by_source", {}).items()):
            lines.append(f"| skipped by the raw source: {k} | {v} |")
        lines += ["", "| stage | seconds | model calls |", "|---|---:|---:|"] + [
            f"| {k} | {v:.2f} | {report['model_calls'].get(k, '')} |" for k, v in report["timings_s"].items()
        ]
        atomic_write_text(out_dir / f"report_{split}.md", "\n".join(lines) + "\n")
        if history and self.gate is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 3))
            ax.hist(history, bins=50)
            ax.axvline(self.gate.threshold, color="black", linestyle="--")
            ax.set_title(f"gate: combined score of {split} pairs (first pass)")
            fig.tight_layout()
            with atomic_open(out_dir / f"gate_scores_{split}.png", "wb") as f:
                fig.savefig(f, dpi=100, format="png")
            plt.close(fig)
