"""I'_C paired with T'_C: a text generator proposes compositional negative captions, an editor changes the image
to match each one. Emits the captions (kind `compositional/<k>`) and the edited images (same kind, `pair` = index
of their caption); a caption whose edit fails is still emitted, its image slot masked.

Expensive editors (diffusion) are cached on disk (see `datamodules.cache`) with a fill policy:
  online — a miss is generated in the loader worker and written (single process, small data);
  ahead  — `fill()` runs before training, each rank its share of keys, then a barrier; misses during training
           are masked and counted (the default when an expensive editor is configured);
  skip   — never generate during training; misses are masked and counted.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Sequence
from typing import Literal

from PIL import Image

from datamodules.cache import DiskCache, cache_key, content_hash, owns
from datamodules.negatives.base import NegativeGenerator
from datamodules.negatives.editors.base import ImageEditor
from datamodules.records import Negative, Record, load_image

log = logging.getLogger(__name__)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class ImageEdit(NegativeGenerator):
    """Args:
    text: the T'_C generator (e.g. text rules or the LLM rewriter).
    editor: the image editor (renderer for the synthetic world, diffusers for real images).
    num_per_sample: (T'_C, I'_C) pairs per sample.
    cache_dir: where edits of an expensive editor are cached (required for one).
    fill: online | ahead | skip (see module docstring); null = ahead for expensive editors, online otherwise.
    seed: part of the cache key (diffusion sampling seed).
    """

    name = "image_edit"
    version = "1"

    def __init__(
        self,
        text: NegativeGenerator,
        editor: ImageEditor,
        *,
        num_per_sample: int = 1,
        cache_dir: str | None = None,
        fill: Literal["online", "ahead", "skip"] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.text_gen = text
        self.editor = editor
        self.num_per_sample = num_per_sample
        self.fill_policy = fill or ("ahead" if editor.expensive else "online")
        if self.fill_policy not in ("online", "ahead", "skip"):
            raise ValueError(f"image_edit.fill must be online|ahead|skip, got {fill!r}")
        if editor.expensive and cache_dir is None:
            raise ValueError(
                "image_edit.cache_dir is required with an expensive editor (edits are generated once)"
            )
        self.cache = DiskCache(cache_dir, "image_edit") if cache_dir else None
        self.seed = seed

    def bind(self, *, key=None, leak_filter=None, vocabulary=None) -> ImageEdit:
        """Also binds the inner text generator (same hints; it keeps its own key for its counters)."""
        super().bind(key=key, leak_filter=leak_filter, vocabulary=vocabulary)
        self.text_gen.bind(leak_filter=leak_filter, vocabulary=vocabulary)
        return self

    def key(self, image: Image.Image, source: str, target: str) -> str:
        return cache_key(
            generator=self.name,
            version=self.version,
            editor=self.editor.identity(),
            seed=self.seed,
            image=content_hash(image.tobytes() + repr(image.size).encode()),
            source=source,
            target=target,
        )

    def _edit(self, image: Image.Image, record: Record, target: str, rng: random.Random, *, generate: bool):
        if self.cache is None:
            self.stats["calls"] += 1
            return self.editor.edit(image, record, record.caption, target, rng)
        key = self.key(image, record.caption, target)
        blob = self.cache.get(key)
        if blob is not None:
            self.stats["cache_hit"] += 1
            return None if blob == b"" else Image.open(io.BytesIO(blob)).convert("RGB")
        self.stats["cache_miss"] += 1
        if not generate:
            return None
        self.stats["calls"] += 1
        edited = self.editor.edit(image, record, record.caption, target, rng)
        self.cache.put(key, b"" if edited is None else _png(edited))  # failures are cached too
        return edited

    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        texts = self.text_gen(record, image, rng)[: self.num_per_sample]
        for k, v in self.text_gen.pop_stats().items():
            self.stats[k.replace("/", ".")] += v
        out: list[Negative] = list(texts)
        for k, t in enumerate(texts):
            edited = self._edit(image, record, t.payload, rng, generate=self.fill_policy == "online")
            if edited is None:
                self.stats["masked"] += 1
                continue
            out.append(Negative("image", t.kind, edited, self.name, self.version, pair=k))
        return out

    def fill(
        self, records: Sequence[Record], *, seed: int, rank: int = 0, world_size: int = 1
    ) -> dict[str, int]:
        """Generates the missing cache entries this rank owns (key hash % world_size == rank).

        Uses the same per-record RNG as the dataset, so it fills exactly the entries training will read.
        """
        if self.cache is None:
            return {}
        made = skipped = 0
        for rec in records:
            rng = self.rng(seed, rec)
            image = load_image(rec.image)
            for t in self.text_gen(rec, image, rng)[: self.num_per_sample]:
                key = self.key(image, rec.caption, t.payload)
                if not owns(key, rank, world_size) or key in self.cache:
                    skipped += 1
                    continue
                edited = self.editor.edit(image, rec, rec.caption, t.payload, rng)
                self.cache.put(key, b"" if edited is None else _png(edited))
                made += 1
        log.info(
            "image_edit fill (rank %d/%d): %d edits generated, %d skipped", rank, world_size, made, skipped
        )
        return {"generated": made, "skipped": skipped}
