"""Meaning-preserving rewrites, not negatives: a caption that is a plain list of noun phrases ("a red cross, a
purple circle and a green star") with its items in another order. Kind `paraphrase/list_order`; trained with a
pull term (`loss=list_order`: each tower keeps a caption and its reordering together).

Why (README "Relational binding"): the relational terms teach the text tower that word order matters ("A left of
B" vs "B left of A"), and the tower generalises that to lists, where order means nothing: after `experiment=hardneg`
an attribute list and its reordering have cosine 0.90 (baseline 0.98), and retrieval of list captions falls from
54% to 30% t2i R@1 while relation captions gain. These rewrites tell the tower where order does not matter.

A caption is a list when it splits on ", " / ", and " / " and " into 2+ items that each start with a determiner or
a number (a, an, the, one ... ten, some, no is excluded: "a cube and no ball" is a negation, not a list) and have at
most `max_item_words` words (a long item is likely a clause: "a man and a dog running on the beach" is not split).
"""

from __future__ import annotations

import random
import re

from PIL import Image

from datamodules.lexicon import NUMBERS
from datamodules.negatives.base import NegativeGenerator
from datamodules.records import Negative, Record

_SPLIT = re.compile(r",\s*(?:and\s+)?|\s+and\s+")
_DETERMINERS = {"a", "an", "the", "some", *NUMBERS}  # not lexicon.DETERMINERS: no possessives/demonstratives


def list_items(caption: str, max_item_words: int = 4) -> list[str] | None:
    """The items of a caption that is a plain list of noun phrases, else None."""
    items = [s.strip() for s in _SPLIT.split(caption.strip().rstrip("."))]
    if len(items) < 2 or any(not s for s in items):
        return None
    for s in items:
        words = s.split()
        if words[0].lower() not in _DETERMINERS or len(words) > max_item_words:
            return None
    return items


def join_items(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def reorder(caption: str, rng: random.Random, max_item_words: int = 4) -> str | None:
    """The list in another order (None if the caption is not a list or every order reads the same)."""
    items = list_items(caption, max_item_words)
    if items is None or len(set(items)) < 2:
        return None
    original = join_items(items)
    order = items[:]
    while join_items(order) == original:  # terminates: two items differ, so some order reads differently
        rng.shuffle(order)
    return join_items(order)


class ListOrder(NegativeGenerator):
    """Args: num_per_caption: reorderings per list caption (distinct; fewer when the list has fewer orders);
    max_item_words: longest item (in words) still treated as a noun phrase."""

    name = "list_order"
    version = "1"

    def __init__(self, num_per_caption: int = 1, max_item_words: int = 4) -> None:
        super().__init__()
        if num_per_caption < 1 or max_item_words < 1:
            raise ValueError(
                f"list_order: num_per_caption and max_item_words must be >= 1, got {num_per_caption}, "
                f"{max_item_words}"
            )
        self.num_per_caption, self.max_item_words = num_per_caption, max_item_words

    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        out: list[Negative] = []
        seen = {record.caption}
        for _ in range(self.num_per_caption):
            text = reorder(record.caption, rng, self.max_item_words)
            if text is None:
                self.stats["not_a_list"] += 1
                break
            if text in seen:
                self.stats["masked"] += 1
                continue
            seen.add(text)
            out.append(self.text("paraphrase/list_order", text))
        return out
