"""`caption`: a lone image gets a caption from a captioner backend (a transformers VLM, or the scene-graph
captioner of the synthetic world). Pairs and lone texts pass through untouched."""

from __future__ import annotations

from datamodules.preprocess.stages.base import (
    Item,
    Stage,
    StageContext,
    TextCodec,
    image_hash,
    normalize_text,
)


class CaptionStage(Stage):
    """Args: backend: object with identity() and caption(images, records, seeds) -> [str | None]."""

    name = "caption"

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, items: list[Item], ctx: StageContext) -> list[Item]:
        todo = [it for it in items if it.record.caption is None and it.image is not None]
        texts = ctx.cached_map(
            self.name,
            self.backend.identity(),
            [{"image": image_hash(it.image), "record": it.record.id} for it in todo],
            [(it.image, it.record, ctx.item_seed(it.record.id, self.name)) for it in todo],
            lambda batch: self.backend.caption(*map(list, zip(*batch))),
            TextCodec,
        )
        failed = set()
        for it, text in zip(todo, texts):
            text = normalize_text(text)
            if not text:
                ctx.drop(it, "caption_failed")
                failed.add(id(it))
                continue
            it.record.caption = text
            it.record.provenance.append({"stage": self.name, "model": self.backend.identity()})
            it.record.meta["produced"] = "captioned"
        return [it for it in items if id(it) not in failed]
