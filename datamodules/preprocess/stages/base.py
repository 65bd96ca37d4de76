"""The stage contract of the preprocessing pipeline.

An `Item` is a record plus its decoded image. A `Stage` takes the list of items and returns the items that go on;
every item it does not return must have been dropped through `ctx.drop(item, reason)`, so the pipeline can prove
that each input record is either in the clean manifest or on a line of the report.

Stages run in one of two phases:
- `produce` (before the gate, in config order, on every item): e.g. caption lone images, draw lone texts;
- `repair` (after the gate, on the pairs that failed it, once per look-again round): e.g. the VLM revises the caption
  of a pair the gate rejected, and the pair is gated again.

Model calls go through `ctx.cached_map`, which reads and writes the content-addressed cache (a re-run of the same
config makes no model calls) and, when run distributed, gives each rank the cache keys whose hash falls to it, then
waits at a barrier and reads the other ranks' outputs from the shared cache.
"""

from __future__ import annotations

import hashlib
import io
import json
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from datamodules.cache import DiskCache, cache_key, content_hash, owns
from datamodules.records import ImageRef, Record


@dataclass
class Item:
    record: Record
    image: Image.Image | None


def normalize_text(value: Any) -> str:
    """A model's or a source's caption with whitespace collapsed; "" for anything that is not text."""
    return " ".join(value.split()) if isinstance(value, str) else ""


def image_hash(image: Image.Image) -> str:
    """Content hash of a decoded image (pixels + size + mode)."""
    return content_hash(image.tobytes() + repr((image.size, image.mode)).encode())


class TextCodec:
    """Cache payload of a text output; a failed output (None) is cached too, so it is not retried on re-runs."""

    @staticmethod
    def encode(value: str | None) -> bytes:
        return json.dumps({"text": value}, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def decode(blob: bytes) -> str | None:
        return json.loads(blob.decode("utf-8"))["text"]


class ImageCodec:
    @staticmethod
    def encode(value: Image.Image | ImageRef | None) -> bytes:
        if value is None:
            return b""
        if isinstance(value, ImageRef):
            value = value.load()
        buf = io.BytesIO()
        value.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()

    @staticmethod
    def decode(blob: bytes) -> Image.Image | None:
        if not blob:
            return None
        image = Image.open(io.BytesIO(blob))
        image.load()
        return image.convert("RGB")


class StageContext:
    """What a stage may use: the cache, seeds, batch size, the rank split and the drop counter.

    Args:
        cache_dir: shared cache folder (None: no cache; not allowed with world_size > 1).
        seed: base seed; each item gets `item_seed(record id, stage, round)`.
        batch_size: model batch size of `cached_map`.
        rank / world_size / barrier: the distributed split (barrier: a callable, e.g. torch.distributed.barrier).
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        *,
        seed: int = 0,
        batch_size: int = 32,
        rank: int = 0,
        world_size: int = 1,
        barrier: Callable[[], None] | None = None,
    ) -> None:
        if world_size > 1 and cache_dir is None:
            raise ValueError(
                "distributed preprocessing needs preprocess.cache_dir on a filesystem all ranks share"
            )
        self.cache = DiskCache(cache_dir, "preprocess") if cache_dir else None
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.barrier = barrier or (lambda: None)
        self.calls: Counter = Counter()  # model calls made by this rank, per stage
        self.dropped: Counter = Counter()
        self.round = 0  # look-again round (repair phase)

    def item_seed(self, record_id: str, *parts: Any) -> int:
        blob = json.dumps([self.seed, record_id, *parts], default=str).encode()
        return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")

    def drop(self, item: Item, reason: str) -> None:
        self.dropped[reason] += 1
        item.record.meta["dropped"] = reason

    def cached_map(
        self,
        stage: str,
        identity: dict,
        key_parts: Sequence[dict],
        inputs: Sequence[Any],
        fn: Callable[[list[Any]], list[Any]],
        codec: type[TextCodec] | type[ImageCodec],
        *,
        cacheable: bool = True,
    ) -> list[Any]:
        """`fn` on every input (in batches of `batch_size`), through the cache and the rank split.

        Under a rank split every rank must call this the same number of times (it holds a barrier), so stages call
        it even with no inputs; ranks reach the same gate decisions because the scorers are deterministic."""
        n = len(inputs)
        out: list[Any] = [None] * n
        if not cacheable or self.cache is None:
            for s in range(0, n, self.batch_size):
                res = self._call(stage, fn, list(inputs[s : s + self.batch_size]))
                out[s : s + len(res)] = res
            return out
        keys = [cache_key(stage=stage, backend=identity, seed=self.seed, **p) for p in key_parts]
        todo = []
        for i, k in enumerate(keys):
            hit = self.cache.get(k)
            if hit is None:
                todo.append(i)
            else:
                out[i] = codec.decode(hit)
        mine = [i for i in todo if self.world_size == 1 or owns(keys[i], self.rank, self.world_size)]
        for s in range(0, len(mine), self.batch_size):
            idx = mine[s : s + self.batch_size]
            res = self._call(stage, fn, [inputs[i] for i in idx])
            for i, value in zip(idx, res):
                out[i] = value
                self.cache.put(keys[i], codec.encode(value))
        if self.world_size > 1:
            self.barrier()
            mine_set = set(mine)
            for i in todo:
                if i not in mine_set:
                    hit = self.cache.get(keys[i])
                    if hit is None:
                        raise RuntimeError(
                            f"rank {self.rank}: the {stage} output of another rank is missing from the cache "
                            f"({self.cache.dir}); is preprocess.cache_dir on a filesystem all ranks share?"
                        )
                    out[i] = codec.decode(hit)
        return out

    def _call(self, stage: str, fn: Callable, batch: list) -> list:
        res = list(fn(batch))
        if len(res) != len(batch):
            raise RuntimeError(f"stage {stage}: backend returned {len(res)} outputs for {len(batch)} inputs")
        self.calls[stage] += len(batch)
        return res


class Stage(ABC):
    """One preprocessing step. Subclasses set `name` and `phase` and implement `__call__`."""

    name: str = "stage"
    phase: Literal["produce", "repair"] = "produce"

    def identity(self) -> dict:
        backend = getattr(self, "backend", None)
        return {"stage": self.name, "backend": backend.identity() if backend is not None else None}

    def backend_map(self, items: list[Item], ctx: StageContext, method: str, codec: type) -> list[Any]:
        """`backend.<method>(images, records, seeds)` over the items through `ctx.cached_map`, keyed by image content,
        current caption, record id, stage and look-again round (a revised caption or a later round is a new key)."""
        return ctx.cached_map(
            self.name,
            self.backend.identity(),
            [
                {"image": image_hash(it.image), "caption": it.record.caption, "record": it.record.id}
                for it in items
            ],
            [(it.image, it.record, ctx.item_seed(it.record.id, self.name, ctx.round)) for it in items],
            lambda batch: getattr(self.backend, method)(*map(list, zip(*batch))),
            codec,
        )

    @abstractmethod
    def __call__(self, items: list[Item], ctx: StageContext) -> list[Item]:
        """The items that go on (in any order); every other input item must be passed to `ctx.drop`."""
