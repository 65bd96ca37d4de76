"""Map-style dataset over records: loads + transforms the image, tokenizes the caption, attaches negatives."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.records import Record, load_image

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """Args:
    records: the split's records (pairs with image and caption).
    image_transform: PIL image -> tensor [C, H, W] (the model's preprocessing).
    tokenizer: list[str] -> LongTensor [n, L] (the model's tokenizer).
    negatives: hard-negative generators, each `__call__(record, image, rng) -> list[Negative]`.
    seed: base seed; each (generator, record) gets an RNG seeded by (seed, generator name, record id).
    """

    def __init__(
        self,
        records: Sequence[Record],
        image_transform: Callable,
        tokenizer: Callable,
        *,
        negatives: Sequence[Any] = (),
        seed: int = 0,
    ) -> None:
        bad = [r.id for r in records if r.image is None or not r.caption]
        if bad:
            raise ValueError(
                f"{len(bad)} records lack an image or a caption (e.g. {bad[:3]}); run preprocessing first"
            )
        self.records = list(records)
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.negatives = list(negatives)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        try:
            image = load_image(rec.image)
        except (OSError, ValueError) as e:
            raise RuntimeError(f"record {rec.id}: cannot load image {rec.image!r}: {e}") from e
        sample: dict[str, Any] = {
            "id": rec.id,
            "image_key": rec.image_key,
            "image": self.image_transform(image),
            "text": self.tokenizer([rec.caption])[0],
            "neg_images": [],
            "neg_texts": [],
        }
        if self.negatives:
            stats: dict[str, int] = {}
            for gen in self.negatives:
                # One RNG per (seed, generator, record): negatives do not depend on worker assignment or on
                # which other generators are on.
                rng = random.Random(f"{self.seed}-{gen.name}-{rec.id}")
                offset = len(sample["neg_texts"])
                for neg in gen(rec, image, rng):
                    if neg.modality == "text":
                        sample["neg_texts"].append((self.tokenizer([neg.payload])[0], neg.kind))
                    else:
                        pair = -1 if neg.pair is None else offset + neg.pair
                        sample["neg_images"].append((self.image_transform(neg.payload), neg.kind, pair))
                for k, v in gen.pop_stats().items():
                    stats[k] = stats.get(k, 0) + v
            sample["gen_stats"] = stats
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The batch contract (ARCHITECTURE §3).

    images [B+M, C, H, W]: B positives, then M image negatives; `img_neg_owner` [M] gives each one's positive.
    texts  [B+N, L]:       B positives, then N text negatives; `txt_neg_owner` [N], `txt_neg_kind` (N strings).
    `img_neg_pair` [M]: for I'_C made to match a T'_C, the index of that text negative among the N; -1 otherwise.
    `num_pos` = B. Samples with fewer negatives simply own fewer columns (owner indices are the validity mask).
    `gen_stats`: generator counters (cache hits/misses, calls, masked slots) summed over the batch.
    """
    images = [s["image"] for s in samples]
    texts = [s["text"] for s in samples]
    img_owner, img_kind, img_pair, txt_owner, txt_kind = [], [], [], [], []
    stats: dict[str, int] = {}
    for b, s in enumerate(samples):
        txt_offset = len(txt_owner)
        for t, kind, pair in s["neg_images"]:
            images.append(t)
            img_owner.append(b)
            img_kind.append(kind)
            img_pair.append(-1 if pair < 0 else txt_offset + pair)
        for t, kind in s["neg_texts"]:
            texts.append(t)
            txt_owner.append(b)
            txt_kind.append(kind)
        for k, v in s.get("gen_stats", {}).items():
            stats[k] = stats.get(k, 0) + v
    return {
        "images": torch.stack(images),
        "texts": torch.stack(texts),
        "num_pos": len(samples),
        "img_neg_owner": torch.tensor(img_owner, dtype=torch.long),
        "img_neg_kind": img_kind,
        "img_neg_pair": torch.tensor(img_pair, dtype=torch.long),
        "txt_neg_owner": torch.tensor(txt_owner, dtype=torch.long),
        "txt_neg_kind": txt_kind,
        "ids": [s["id"] for s in samples],
        "image_keys": [s["image_key"] for s in samples],
        "gen_stats": stats,
    }
