"""`text_to_image`: a lone text gets an image from a text-to-image backend (a diffusers pipeline, or the renderer
of the synthetic world). Pairs and lone images pass through untouched."""

from __future__ import annotations

from datamodules.preprocess.stages.base import ImageCodec, Item, Stage, StageContext
from datamodules.records import ImageRef


class TextToImageStage(Stage):
    """Args: backend: object with identity(), generate(captions, seeds) -> [PIL image | ImageRef | None] and an
    optional `cacheable` flag (False for backends cheaper than the cache, e.g. the renderer)."""

    name = "text_to_image"

    def __init__(self, backend) -> None:
        self.backend = backend

    def __call__(self, items: list[Item], ctx: StageContext) -> list[Item]:
        todo = [it for it in items if it.image is None and it.record.caption]
        images = ctx.cached_map(
            self.name,
            self.backend.identity(),
            [{"caption": it.record.caption, "record": it.record.id} for it in todo],
            [(it.record.caption, ctx.item_seed(it.record.id, self.name)) for it in todo],
            lambda batch: self.backend.generate(*map(list, zip(*batch))),
            ImageCodec,
            cacheable=getattr(self.backend, "cacheable", True),
        )
        failed = set()
        for it, image in zip(todo, images):
            if image is None:
                ctx.drop(it, "text_to_image_failed")
                failed.add(id(it))
                continue
            if isinstance(
                image, ImageRef
            ):  # e.g. the renderer's scene image: keep the reference (scene graph)
                it.record.image, image = image, image.load()
            it.image = image
            it.record.provenance.append({"stage": self.name, "model": self.backend.identity()})
            it.record.meta["produced"] = "generated"
        return [it for it in items if id(it) not in failed]
