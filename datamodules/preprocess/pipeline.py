"""Raw records -> trusted pairs (source paper §4): validate every record (unreadable, empty, huge or duplicate input
is skipped and counted with its reason), caption lone images, draw lone texts, then pass every pair through the
gate; a pair that fails is sent to the captioner to be repaired and gated again (up to `repair_rounds` times —
the "look again" loop), and dropped with its reason if it never passes.

Outputs in `out_dir`: `clean.jsonl` (image path, caption, id, provenance, gate scores), `images/` (rendered or
generated images written as PNG), `report.json` + `report.md` (counts kept / repaired / captioned / generated /
dropped with reasons, per-stage seconds, gate-score histogram). Captioner and text-to-image outputs are cached by
content (`datamodules.cache`), so re-running the same config makes no model calls.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.cache import DiskCache, cache_key, content_hash
from datamodules.gate import Gate
from datamodules.records import ImageRef, Record, load_image

log = logging.getLogger(__name__)


def _image_bytes_key(image: Image.Image) -> str:
    return content_hash(image.tobytes() + repr(image.size).encode())


class Preprocessor:
    """Args:
    gate: the similarity gate (calibrated).
    captioner: object with caption(image, record, rng) and repair(image, record, rng) (VLM or symbolic); None
        drops lone images and skips repair.
    t2i: object with generate(caption, rng) -> image | None (diffusers or renderer); None drops lone texts.
    repair_rounds: look-again rounds for a pair that fails the gate.
    min_side / max_side / max_pixels: image size limits (outside: skipped as zero-size / huge).
    cache_dir: cache of captioner and text-to-image outputs.
    seed: per-record RNG seed.
    """

    def __init__(
        self,
        gate: Gate,
        *,
        captioner: Any = None,
        t2i: Any = None,
        repair_rounds: int = 2,
        min_side: int = 8,
        max_pixels: int = 50_000_000,
        cache_dir: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        self.gate, self.captioner, self.t2i = gate, captioner, t2i
        self.repair_rounds, self.min_side, self.max_pixels = repair_rounds, min_side, max_pixels
        self.cache = DiskCache(cache_dir, "preprocess") if cache_dir else None
        self.batch_size, self.seed = batch_size, seed
        self.calls: Counter = Counter()

    # -- cached model calls ---------------------------------------------------------------------------------------
    def _cached_text(
        self, kind: str, backend: Any, image: Image.Image, record: Record, rng: random.Random
    ) -> str:
        key = cache_key(
            stage=kind,
            backend=backend.identity(),
            image=_image_bytes_key(image),
            caption=record.caption,
            seed=self.seed,
            record=record.id,
        )
        if self.cache is not None and (hit := self.cache.get_json(key)) is not None:
            return hit
        self.calls[kind] += 1
        text = (
            backend.caption(image, record, rng) if kind == "caption" else backend.repair(image, record, rng)
        )
        if self.cache is not None:
            self.cache.put_json(key, text)
        return text

    def _cached_image(self, caption: str, record: Record, rng: random.Random):
        if not getattr(self.t2i, "cacheable", True):
            self.calls["text_to_image"] += 1
            return self.t2i.generate(caption, rng)
        key = cache_key(
            stage="text_to_image",
            backend=self.t2i.identity(),
            caption=caption,
            seed=self.seed,
            record=record.id,
        )
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return None if hit == b"" else Image.open(io.BytesIO(hit)).convert("RGB")
        self.calls["text_to_image"] += 1
        image = self.t2i.generate(caption, rng)
        if self.cache is not None:
            buf = io.BytesIO()
            if image is not None:
                image.save(buf, format="PNG")
            self.cache.put(key, buf.getvalue())
        return image

    # -- stages ---------------------------------------------------------------------------------------------------
    def validate(self, records: list[Record], dropped: Counter) -> list[tuple[Record, Image.Image | None]]:
        seen: set[str] = set()
        out = []
        for r in records:
            if r.id in seen:
                dropped["duplicate_id"] += 1
                continue
            seen.add(r.id)
            if r.caption is not None:
                if not isinstance(r.caption, str) or not r.caption.strip():
                    if r.image is None:
                        dropped["empty_caption_and_no_image"] += 1
                        continue
                    r.caption, r.source = None, "lone_image"  # an image with an empty caption is a lone image
                else:
                    r.caption = " ".join(r.caption.split())
            image = None
            if r.image is not None:
                try:
                    if isinstance(r.image, str) and not Path(r.image).is_file():
                        raise FileNotFoundError(r.image)
                    if not isinstance(r.image, ImageRef):
                        with Image.open(
                            r.image if isinstance(r.image, str) else io.BytesIO(r.image)
                        ) as probe:
                            w, h = probe.size
                            if w * h > self.max_pixels:
                                dropped["image_too_large"] += 1
                                continue
                    image = load_image(r.image)
                except FileNotFoundError:
                    dropped["image_missing"] += 1
                    continue
                except (OSError, ValueError, Image.DecompressionBombError):
                    dropped["image_unreadable"] += 1
                    continue
                if min(image.size) < self.min_side:
                    dropped["image_too_small"] += 1
                    continue
            if image is None and r.caption is None:
                dropped["no_image_no_caption"] += 1
                continue
            out.append((r, image))
        return out

    def run(self, records: list[Record], out_dir: str | Path) -> dict[str, Any]:
        out_dir = Path(out_dir)
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        dropped: Counter = Counter()
        counts: Counter = Counter()
        t0 = time.perf_counter()
        items = self.validate(list(records), dropped)
        counts["input"] = len(records)
        timings["validate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pairs: list[tuple[Record, Image.Image]] = []
        for r, image in items:
            rng = random.Random(f"{self.seed}-{r.id}")
            if r.caption is None:  # lone image
                if self.captioner is None:
                    dropped["lone_image_no_captioner"] += 1
                    continue
                r.caption = self._cached_text("caption", self.captioner, image, r, rng)
                r.provenance.append({"stage": "caption", "model": self.captioner.identity()})
                r.meta["produced"] = "captioned"
            elif image is None:  # lone text
                if self.t2i is None:
                    dropped["lone_text_no_t2i"] += 1
                    continue
                image = self._cached_image(r.caption, r, rng)
                if image is None:
                    dropped["text_to_image_failed"] += 1
                    continue
                if isinstance(image, ImageRef):  # e.g. the renderer's scene image: keep the reference
                    r.image, image = image, image.load()
                r.provenance.append({"stage": "text_to_image", "model": self.t2i.identity()})
                r.meta["produced"] = "generated"
            pairs.append((r, image))
        timings["caption_and_text_to_image"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        kept: list[tuple[Record, Image.Image]] = []
        pending = pairs
        history: list[float] = []
        for round_ in range(self.repair_rounds + 1):
            if not pending:
                break
            scores = self._score(pending)
            passed = self.gate.passes(scores).tolist()
            history += scores["combined"].tolist() if round_ == 0 else []
            retry = []
            for k, ((r, image), ok) in enumerate(zip(pending, passed)):
                r.gate_scores = {name: float(v[k]) for name, v in scores.items()}
                if round_ == 0:
                    r.meta["gate_first_pass"] = bool(ok)
                if ok:
                    if round_ > 0:
                        r.meta["produced"] = "repaired"
                        r.meta["repair_rounds"] = round_
                    kept.append((r, image))
                elif round_ < self.repair_rounds and self.captioner is not None:
                    rng = random.Random(f"{self.seed}-{r.id}-repair{round_}")
                    r.meta.setdefault("original_caption", r.caption)
                    r.caption = self._cached_text("repair", self.captioner, image, r, rng)
                    r.provenance.append(
                        {"stage": "repair", "round": round_ + 1, "model": self.captioner.identity()}
                    )
                    retry.append((r, image))
                else:
                    dropped["gate_failed" if self.captioner is None else "gate_failed_after_repair"] += 1
                    r.meta["dropped"] = True
            pending = retry
        timings["gate_and_repair"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with (out_dir / "clean.jsonl").open("w") as f:
            for r, image in kept:
                path = out_dir / "images" / f"{r.id}.png"
                image.save(path)
                counts[r.meta.get("produced", "kept")] += 1
                f.write(
                    json.dumps(
                        {
                            "id": r.id,
                            "image": f"images/{r.id}.png",
                            "caption": r.caption,
                            "source": r.source,
                            "provenance": r.provenance,
                            "gate_scores": r.gate_scores,
                        }
                    )
                    + "\n"
                )
        timings["write"] = time.perf_counter() - t0
        report = {
            "counts": dict(counts),
            "dropped": dict(dropped),
            "output": len(kept),
            "accounted": len(kept) + sum(dropped.values()),
            "timings_s": timings,
            "model_calls": dict(self.calls),
            "gate": {"threshold": self.gate.threshold, "combine": self.gate.combine},
        }
        if report["accounted"] != counts["input"]:
            raise AssertionError(
                f"preprocess lost records: {counts['input']} in, {report['accounted']} accounted"
            )
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        self._write_md(out_dir, report, history)
        return {"report": report, "kept": [r for r, _ in kept], "all": [r for r, _ in pairs]}

    def _score(self, pending: list[tuple[Record, Image.Image]]) -> dict:
        import torch

        parts: dict[str, list] = {}
        for s in range(0, len(pending), self.batch_size):
            chunk = pending[s : s + self.batch_size]
            sc = self.gate.score([im for _, im in chunk], [r.caption for r, _ in chunk])
            for k, v in sc.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def _write_md(self, out_dir: Path, report: dict, history: list[float]) -> None:
        lines = [
            "# Preprocessing report",
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
        lines += ["", "| stage | seconds |", "|---|---:|"] + [
            f"| {k} | {v:.2f} |" for k, v in report["timings_s"].items()
        ]
        (out_dir / "report.md").write_text("\n".join(lines) + "\n")
        if history:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 3))
            ax.hist(history, bins=50)
            ax.axvline(self.gate.threshold, color="black", linestyle="--")
            ax.set_title("gate: combined score of pairs (first pass)")
            fig.tight_layout()
            fig.savefig(out_dir / "gate_scores.png", dpi=100)
            plt.close(fig)
