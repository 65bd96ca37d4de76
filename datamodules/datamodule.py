"""The DataModule: reads a source, builds datasets and loaders with the model's transforms and tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from datamodules.dataset import ClipDataset, collate
from datamodules.negatives.base import NegativeGenerator
from datamodules.sources.base import Source

log = logging.getLogger(__name__)


def _bound(negs: dict[str, Any] | Sequence[Any] | None, hints: dict[str, Any]) -> list[NegativeGenerator]:
    """The generators (name -> generator, or a list), bound to the source's hints. A name becomes the generator's
    key (its RNG stream and counters), so two generators of one class do not share them."""
    negs = negs or {}
    pairs = list(negs.items()) if isinstance(negs, Mapping) else [(None, g) for g in negs]
    out = []
    for name, gen in pairs:
        if gen is None:
            continue
        if not isinstance(gen, NegativeGenerator):
            raise TypeError(f"negatives.{name}: expected a NegativeGenerator, got {type(gen).__name__}")
        out.append(gen.bind(key=name, **hints))
    return out


class ClipDataModule(L.LightningDataModule):
    """Args:
    source: where records come from (synthetic world, JSONL/CSV pairs, ...).
    batch_size: the *global* batch size; each device gets batch_size / world_size.
    eval_batch_size: global batch size for val/test (default: batch_size).
    num_workers / pin_memory / persistent_workers: DataLoader settings.
    negatives: hard-negative generators applied to training samples (name -> generator).
    val_negatives: generators applied to validation samples, for the seeded, gradient-free diagnostics
        (`val/hardneg_acc/<kind>`, tower sensitivity). None = the training generators; {} = none. A fixed set here
        makes the diagnostics comparable between experiments (the baseline trains without negatives).
    image_transform / tokenizer: injected by train.py from the model spec.
    seed: base seed of per-sample RNGs.
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        negatives: dict[str, Any] | Sequence[Any] | None = None,
        val_negatives: dict[str, Any] | Sequence[Any] | None = None,
        image_transform: Callable | None = None,
        tokenizer: Callable | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        hints = {
            "leak_filter": getattr(source, "leaks", None),
            "vocabulary": getattr(source, "vocabulary", None),
        }
        self.negatives = _bound(negatives, hints)
        self.val_negatives = self.negatives if val_negatives is None else _bound(val_negatives, hints)
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.seed = seed
        self.datasets: dict[str, ClipDataset] = {}

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def per_device(self, global_batch: int) -> int:
        ws = self.world_size
        if global_batch % ws:
            raise ValueError(f"data.batch_size={global_batch} is not divisible by the world size {ws}")
        return global_batch // ws

    def dataset(self, split: str) -> ClipDataset:
        if split not in self.datasets:
            if self.image_transform is None or self.tokenizer is None:
                raise RuntimeError(
                    "ClipDataModule needs image_transform and tokenizer (train.py injects them)"
                )
            records = self.source.records(split)
            if not records:
                raise ValueError(f"data.source has no '{split}' records ({self.source.describe()})")
            self.datasets[split] = ClipDataset(
                records,
                self.image_transform,
                self.tokenizer,
                negatives={"train": self.negatives, "val": self.val_negatives}.get(split, ()),
                seed=self.seed,
            )
            log.info("%s split: %d records", split, len(records))
        return self.datasets[split]

    def prepare_data(self) -> None:
        self.source.prepare()

    def fill_caches(self) -> None:
        """Fills the caches of expensive generators ahead of training: each rank its share, then a barrier."""
        ahead = [g for g in self.negatives if getattr(g, "fill_policy", None) == "ahead"]
        if not ahead:
            return
        rank = self.trainer.global_rank if self.trainer is not None else 0
        records = self.source.records("train")
        for gen in ahead:
            gen.fill(records, seed=self.seed, rank=rank, world_size=self.world_size)
        if self.trainer is not None:
            self.trainer.strategy.barrier("fill_caches")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.fill_caches()
            self.dataset("train")
            self.dataset("val")
        if stage in (None, "test"):
            self.dataset("test")

    def _loader(self, split: str, batch: int, *, train: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.per_device(batch),
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)
