"""The generator interface. A generator maps (record, its PIL image, a seeded RNG) to a list of `Negative`s.

Subclasses implement `generate()`; the base class's `__call__` is the only entry point and enforces the contract
for every generator, whether or not it handles these cases itself:
- never the positive: a text negative equal to the caption (case and spacing ignored) or an image negative
  pixel-identical to the image is dropped (`rejected_positive`);
- never a held-out composition: a text negative the source flags (`leak_filter`, the synthetic world's held-out
  pairs/relations) is dropped (`rejected_heldout`); an image negative paired with a dropped caption goes with it;
- counts: `stats` (summed into the batch; logged as running totals, `train/gen/<generator>/<counter>`).
Generators may also filter early with `self.leaks(text)` (then a rejected candidate never takes a slot).

Source hints reach a generator through `bind(key=..., leak_filter=..., vocabulary=...)`, called by the DataModule
(`key` = the generator's name in the `negatives` group, kept as `run_name`; it keys the per-record RNG and the
counters). Each negative is labelled with its kind (`family/name`, e.g. `structure/trigram_shuffle`,
`compositional/color`), its generator name and version. Generators are deterministic given the RNG: `sample_rng(seed, key, record_id)`.
Expensive generators read/write a `DiskCache`.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

from PIL import Image

from datamodules.records import Negative, Record


def sample_rng(seed: int, key: str, record_id: str) -> random.Random:
    """The RNG of one (generator, record): negatives do not depend on worker assignment, on which other generators
    are on, or on the order records are visited (the dataset and the cache `fill` passes use the same stream)."""
    return random.Random(f"{seed}-{key}-{record_id}")


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


class NegativeGenerator(ABC):
    name: ClassVar[str] = "generator"
    version: ClassVar[str] = "1"

    def __init__(self) -> None:
        self.stats: Counter = Counter()
        self.run_name: str = self.name
        self.leak_filter: Callable[[str], bool] | None = None
        self.vocabulary: dict[str, list[str]] | None = None

    def bind(
        self,
        *,
        key: str | None = None,
        leak_filter: Callable[[str], bool] | None = None,
        vocabulary: dict[str, list[str]] | None = None,
    ) -> NegativeGenerator:
        """Source hints. key: this generator's name in the run (RNG stream and counters; default its class
        `name`); leak_filter: True for text that would leak a held-out composition into training; vocabulary: a
        closed vocabulary ({"colors": [...], "sizes": [...], "objects": [...]}) replacement words are drawn from."""
        if key is not None:
            self.run_name = key
        self.leak_filter = leak_filter
        self.vocabulary = vocabulary
        return self

    def rng(self, seed: int, record: Record) -> random.Random:
        return sample_rng(seed, self.run_name, record.id)

    def leaks(self, text: str) -> bool:
        if self.leak_filter is not None and self.leak_filter(text):
            self.stats["rejected_heldout"] += 1
            return True
        return False

    @abstractmethod
    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        """The negatives of one sample (may be empty: the slot is masked). Called only through `__call__`."""

    def __call__(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        out: list[Negative] = []
        kept_index: list[int | None] = []  # per text of generate(): its index among the kept texts, or None
        kept_texts = 0
        pixels: bytes | None = None  # the positive's pixels, read once if an image negative needs comparing
        for neg in self.generate(record, image, rng):
            if neg.modality == "text":
                if _same_text(neg.payload, record.caption):
                    self.stats["rejected_positive"] += 1
                    kept_index.append(None)
                elif self.leaks(neg.payload):
                    kept_index.append(None)
                else:
                    kept_index.append(kept_texts)
                    kept_texts += 1
                    out.append(neg)
                continue
            if neg.pair is not None:
                index = kept_index[neg.pair] if neg.pair < len(kept_index) else None
                if index is None:  # its caption was dropped (or never emitted)
                    self.stats["masked"] += 1
                    continue
                neg = replace(neg, pair=index)
            payload = neg.payload
            if payload.size == image.size and payload.mode == image.mode:
                pixels = image.tobytes() if pixels is None else pixels
                if payload.tobytes() == pixels:
                    self.stats["rejected_positive"] += 1
                    continue
            out.append(neg)
        return out

    def text(self, kind: str, caption: str) -> Negative:
        return Negative("text", kind, caption, self.name, self.version)

    def image(self, kind: str, image: Image.Image, pair: int | None = None) -> Negative:
        return Negative("image", kind, image, self.name, self.version, pair=pair)

    def pop_stats(self) -> dict[str, int]:
        """Counts since the last call, keyed `<run_name>/<counter>` (hits, misses, calls, masked, ...)."""
        out = {f"{self.run_name}/{k}": v for k, v in self.stats.items() if v}
        self.stats.clear()
        return out
