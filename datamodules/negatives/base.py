"""The generator interface. A generator maps (record, its PIL image, a seeded RNG) to a list of `Negative`s.

Contract: never return a copy of the positive; return [] when it cannot apply (the slot is masked); label each
negative with its kind (`family/name`, e.g. `structure/trigram_shuffle`, `compositional/color`), its generator
name and version. Generators are deterministic given the RNG (the dataset seeds it per record and generator).
Expensive generators read/write a `DiskCache` and report counts through `stats` (summed into the batch and logged).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from PIL import Image

from datamodules.records import Negative, Record


class NegativeGenerator(ABC):
    name: ClassVar[str] = "generator"
    version: ClassVar[str] = "1"

    def __init__(self) -> None:
        self.stats: Counter = Counter()
        # Set by the DataModule from the source: True for text that would leak a held-out composition into
        # training (the synthetic world's held-out pairs/relations); such candidates are never emitted.
        self.leak_filter: Callable[[str], bool] | None = None
        # Set by the DataModule from the source when it has a closed vocabulary (the synthetic world): replacement
        # words are then drawn from it ({"colors": [...], "sizes": [...], "objects": [...]}).
        self.vocabulary: dict[str, list[str]] | None = None

    def leaks(self, text: str) -> bool:
        if self.leak_filter is not None and self.leak_filter(text):
            self.stats["rejected_heldout"] += 1
            return True
        return False

    @abstractmethod
    def __call__(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]: ...

    def text(self, kind: str, caption: str) -> Negative:
        return Negative("text", kind, caption, self.name, self.version)

    def image(self, kind: str, image: Image.Image, pair: int | None = None) -> Negative:
        return Negative("image", kind, image, self.name, self.version, pair=pair)

    def pop_stats(self) -> dict[str, int]:
        """Counts since the last call, keyed `<generator>/<counter>` (hits, misses, calls, masked, ...)."""
        out = {f"{self.name}/{k}": v for k, v in self.stats.items() if v}
        self.stats.clear()
        return out
