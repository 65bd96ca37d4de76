"""Map-style dataset over records: loads + transforms the image, tokenizes the caption, attaches negatives."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from datamodules.records import MAX_IMAGE_PIXELS, Record, load_image

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """Args:
    records: the split's records (pairs with image and caption).
    image_transform: PIL image -> tensor [C, H, W] (the model's preprocessing).
    tokenizer: list[str] -> LongTensor [n, L] (the model's tokenizer).
    negatives: hard-negative generators, each `__call__(record, image, rng) -> list[Negative]`.
    seed: base seed; each (generator, record) gets an RNG seeded by (seed, generator key, record id).
    max_pixels: images above this size are not decoded (checked on the header); like unreadable images they are
        skipped: logged with the record id, counted in the batch (`bad_ids`, logged as `train/bad_samples`), and
        replaced by the next record's sample (at most `max_substitutes` in a row).
    """

    def __init__(
        self,
        records: Sequence[Record],
        image_transform: Callable,
        tokenizer: Callable,
        *,
        negatives: Sequence[Any] = (),
        seed: int = 0,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        max_substitutes: int = 16,
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
        self.max_pixels = max_pixels
        self.max_substitutes = max_substitutes

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, i: int) -> tuple[Record, Image.Image, list[str]]:
        """Record i and its image; an unreadable or over-limit image is logged with its record, counted, and
        replaced by the next record's (so batches keep their size across ranks)."""
        bad: list[str] = []
        for attempt in range(min(self.max_substitutes, len(self.records) - 1) + 1):
            rec = self.records[(i + attempt) % len(self.records)]
            try:
                return rec, load_image(rec.image, max_pixels=self.max_pixels), bad
            except (OSError, ValueError) as e:
                log.warning("record %s: image %r skipped: %s", rec.id, rec.image, e)
                bad.append(rec.id)
        raise RuntimeError(
            f"records {bad[0]} .. {bad[-1]}: {len(bad)} unreadable images in a row; is data.source pointing at "
            "the right folder?"
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec, image, bad = self._load(i)
        sample: dict[str, Any] = {
            "bad_ids": bad,
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
                rng = gen.rng(self.seed, rec)  # one stream per (seed, generator key, record)
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


@dataclass
class Batch:
    """The batch contract (ARCHITECTURE §3). Shape legend: B positives, M image negatives, N text negatives,
    X = B + M images, Y = B + N texts, L token columns (the context length, or fewer: `collate` may drop padding).

    images_XCHW: B positives, then the M image negatives; `img_neg_owner_M` gives each one's positive.
    texts_YL:    B positives, then the N text negatives; `txt_neg_owner_N`, `txt_neg_kind_N` (N strings).
    img_neg_pair_M: for I'_C made to match a T'_C, the index of that text negative among the N; -1 otherwise.
    Samples with fewer negatives simply own fewer columns (owner indices are the validity mask).
    gen_stats: generator counters (cache hits/misses, calls, masked slots) summed over the batch.
    """

    images_XCHW: torch.Tensor
    texts_YL: torch.Tensor
    img_neg_owner_M: torch.Tensor
    img_neg_pair_M: torch.Tensor
    txt_neg_owner_N: torch.Tensor
    img_neg_kind_M: list[str] = field(default_factory=list)
    txt_neg_kind_N: list[str] = field(default_factory=list)
    ids_B: list[str] = field(default_factory=list)
    image_keys_B: list[str] = field(default_factory=list)
    gen_stats: dict[str, int] = field(default_factory=dict)
    bad_ids: list[str] = field(default_factory=list)  # records whose image could not be used (replaced)

    @property
    def num_pos(self) -> int:
        """B: the number of positive pairs."""
        return len(self.ids_B)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Tensors moved to `device` (asynchronously from pinned memory), the rest shared. Lightning's generic
        transfer walks every field, each string of the id and kind lists included; this does not."""
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in _TENSOR_FIELDS},
        )

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when pin_memory=True (tensors pinned, the rest shared)."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in _TENSOR_FIELDS})


def trim_padding(tokens: torch.Tensor, multiple: int = 4, pad: int = 0) -> torch.Tensor:
    """Token ids [n, L] without their trailing all-padding columns, keeping a multiple of `multiple` columns (at
    most L). For host tensors (the loader's collate, `ClipScorer`): done on the CPU before the transfer, so the
    device gets a shorter tensor and never computes a length (that would be a host sync per step)."""
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        return tokens
    used = (tokens != pad).any(0).nonzero()
    if not used.numel():
        return tokens
    length = min(tokens.shape[1], -(-(int(used.max()) + 1) // multiple) * multiple)
    return tokens if length == tokens.shape[1] else tokens[:, :length].contiguous()


def collate(samples: list[dict[str, Any]], text_trim_multiple: int | None = None) -> Batch:
    """Stacks dataset samples into a `Batch`: positives first, then each sample's negatives in sample order.
    `text_trim_multiple`: drop the trailing all-padding columns of `texts_YL` (keeping a multiple of it), for a
    model that takes shorter token rows (`ModelSpec.text_trim_multiple`); done here, in the loader worker, so the
    device gets the shorter tensor from pinned memory and never computes a length."""
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
    stacked = torch.stack(texts)
    return Batch(
        images_XCHW=torch.stack(images),
        texts_YL=stacked if text_trim_multiple is None else trim_padding(stacked, text_trim_multiple),
        img_neg_owner_M=torch.tensor(img_owner, dtype=torch.long),
        img_neg_pair_M=torch.tensor(img_pair, dtype=torch.long),
        txt_neg_owner_N=torch.tensor(txt_owner, dtype=torch.long),
        img_neg_kind_M=img_kind,
        txt_neg_kind_N=txt_kind,
        ids_B=[s["id"] for s in samples],
        image_keys_B=[s["image_key"] for s in samples],
        gen_stats=stats,
        bad_ids=[b for s in samples for b in s.get("bad_ids", ())],
    )


_TENSOR_FIELDS = [f for f in fields(Batch) if f.type in ("torch.Tensor", torch.Tensor)]
