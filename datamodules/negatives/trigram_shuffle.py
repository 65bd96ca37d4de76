"""T'_S: the caption cut into word trigrams whose order is shuffled (guaranteed different from the original)."""

from __future__ import annotations

import random

from PIL import Image

from datamodules.negatives.base import NegativeGenerator
from datamodules.records import Negative, Record


def trigram_shuffle(caption: str, rng: random.Random, n: int = 3) -> str | None:
    words = caption.split()
    grams = [words[i : i + n] for i in range(0, len(words), n)]
    if len(grams) < 2:
        return None
    distinct = {tuple(g) for g in grams}
    if len(distinct) < 2:
        return None  # every permutation reads the same
    for _ in range(20):
        order = list(range(len(grams)))
        rng.shuffle(order)
        out = " ".join(w for k in order for w in grams[k])
        if out != " ".join(words):
            return out
    # Deterministic fallback: rotate by one (differs because at least two trigrams differ).
    return " ".join(w for g in grams[1:] + grams[:1] for w in g)


class TrigramShuffle(NegativeGenerator):
    """Args: num_per_caption: negatives per caption; n: words per gram (3 = trigrams)."""

    name = "trigram_shuffle"
    version = "1"

    def __init__(self, num_per_caption: int = 1, n: int = 3) -> None:
        super().__init__()
        if num_per_caption < 1 or n < 1:
            raise ValueError(
                f"trigram_shuffle: num_per_caption and n must be >= 1, got {num_per_caption}, {n}"
            )
        self.num_per_caption = num_per_caption
        self.n = n

    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        out: list[Negative] = []
        seen = {record.caption}
        for _ in range(self.num_per_caption):
            neg = trigram_shuffle(record.caption, rng, self.n)
            if neg is None or neg in seen:
                self.stats["masked"] += 1
                continue
            seen.add(neg)
            out.append(self.text("structure/trigram_shuffle", neg))
        return out
