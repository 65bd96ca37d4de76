"""`repair` (look again): a pair the gate rejected goes back to the captioner, which sees the image and the current
caption and writes a corrected caption; the pair is then gated again (up to `preprocess.repair_rounds` rounds).
The original caption and every round's revision are kept in the record's provenance."""

from __future__ import annotations

from datamodules.preprocess.stages.base import (
    Item,
    Stage,
    StageContext,
    TextCodec,
    normalize_text,
)


class RepairStage(Stage):
    """Args: backend: object with identity() and repair(images, records, seeds) -> [str | None]; the record's
    `caption` is the caption to revise."""

    name = "repair"
    phase = "repair"

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, items: list[Item], ctx: StageContext) -> list[Item]:
        texts = self.backend_map(items, ctx, "repair", TextCodec)
        out = []
        for it, text in zip(items, texts):
            text = normalize_text(text)
            if not text:
                ctx.drop(it, "repair_failed")
                continue
            it.record.meta.setdefault("original_caption", it.record.caption)
            it.record.provenance.append(
                {
                    "stage": self.name,
                    "round": ctx.round,
                    "model": self.backend.identity(),
                    "before": it.record.caption,
                }
            )
            it.record.caption = text
            out.append(it)
        return out
