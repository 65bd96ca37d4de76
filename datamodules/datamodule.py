"""The DataModule: reads a source, builds datasets and loaders with the model's transforms and tokenizer."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.dataset import Batch, ClipDataset, collate
from datamodules.negatives.base import NegativeGenerator
from datamodules.records import MAX_IMAGE_PIXELS
from datamodules.sampler import ResumableRandomSampler
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


def _check_batch_size(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"data.{key} must be a positive integer, got {value!r}")


def _numpy_state() -> tuple:
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def _set_numpy_state(state: tuple) -> None:
    kind, keys, pos, has_gauss, gauss = state
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


class ClipDataModule(L.LightningDataModule):
    """Args:
    source: where records come from (synthetic world, JSONL/CSV pairs, ...).
    batch_size: the *global* batch size; each device gets batch_size / world_size.
    eval_batch_size: global batch size for val/test (default: batch_size).
    num_workers / persistent_workers / prefetch_factor: DataLoader settings (prefetch_factor: batches each worker
        prepares ahead; None = PyTorch's 2).
    pin_memory: page-locked batches for asynchronous host-to-GPU copies; 'auto' = when the trainer runs on CUDA.
    negatives: hard-negative generators applied to training samples (name -> generator).
    val_negatives: generators applied to validation samples, for the seeded, gradient-free diagnostics
        (`val/hardneg_acc/<kind>`, tower sensitivity). None = the training generators; {} = none. A fixed set here
        makes the diagnostics comparable between experiments (the baseline trains without negatives).
    image_transform / tokenizer: injected by train.py from the model spec.
    text_trim_multiple: injected by train.py (`ModelSpec.text_trim_multiple`): the collate drops the batch's
        trailing padding columns of the token ids (a multiple of this many kept) for a model that takes them
        shorter; None = full context length.
    seed: base seed of per-sample RNGs.
    max_image_pixels: larger images are skipped without decoding (counted like unreadable ones).
    max_bad_fraction: training stops with an error naming the last bad records when more than this share of the
        training samples seen so far (after the first 200) had an unreadable or over-limit image.
    """

    def __init__(
        self,
        source: Source,
        *,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
        prefetch_factor: int | None = None,
        negatives: dict[str, Any] | Sequence[Any] | None = None,
        val_negatives: dict[str, Any] | Sequence[Any] | None = None,
        image_transform: Callable | None = None,
        tokenizer: Callable | None = None,
        text_trim_multiple: int | None = None,
        seed: int = 0,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        _check_batch_size("batch_size", batch_size)
        if eval_batch_size is not None:
            _check_batch_size("eval_batch_size", eval_batch_size)
        self.source = source
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        if pin_memory not in (True, False, "auto"):
            raise ValueError(f"data.pin_memory: expected true, false or auto, got {pin_memory!r}")
        if prefetch_factor is not None and (prefetch_factor < 1 or num_workers == 0):
            raise ValueError(
                f"data.prefetch_factor={prefetch_factor}: needs num_workers > 0 and a value >= 1 (or null)"
            )
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers and num_workers > 0
        hints = {
            "leak_filter": getattr(source, "leaks", None),
            "vocabulary": getattr(source, "vocabulary", None),
        }
        self.negatives = _bound(negatives, hints)
        self.val_negatives = self.negatives if val_negatives is None else _bound(val_negatives, hints)
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.text_trim_multiple = text_trim_multiple
        self.seed = seed
        self.max_image_pixels = max_image_pixels
        self.max_bad_fraction = max_bad_fraction
        self.bad_seen = self.samples_seen = 0
        self._sampler: ResumableRandomSampler | None = None
        self._consumed = 0
        self._resume_state: dict | None = None
        self._restore_rng = False
        self._val_iterated = self._quiet_val_seed = False
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
                max_pixels=self.max_image_pixels,
            )
            log.info("%s split: %d records", split, len(records))
        return self.datasets[split]

    # -- exact resume: the train order's epoch seed, the samples consumed in the epoch, and the RNG states --------
    def _new_epoch(self) -> None:
        self._consumed = 0

    def state_dict(self) -> dict:
        """Saved in every checkpoint (Lightning calls it): where the training order stands, and the RNG states."""
        if self._sampler is None or self._sampler.epoch_seed is None:
            return {}
        return {
            "epoch_seed": self._sampler.epoch_seed,
            "consumed": self._consumed,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_state(),  # primitives: checkpoints load with weights_only=True
            "val_iterated": self._val_iterated,
        }

    def load_state_dict(self, state: dict) -> None:
        """Called by Lightning when fitting from `ckpt_path`: the next train loader continues the saved epoch's order
        from the saved position; the RNG states are restored at the first resumed batch (after the loader has made
        its own draws, which an uninterrupted run would not make there)."""
        if state:
            self._resume_state = dict(state)
            self._consumed = int(state["consumed"])
            self._restore_rng = True
            # With persistent workers the val loader drew its worker seed from the global RNG once, before the
            # checkpoint; the resumed process must not draw it again (that would shift every later epoch's order).
            self._quiet_val_seed = bool(state.get("val_iterated")) and self.persistent_workers

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if self.trainer is not None and self.trainer.validating:
            self._val_iterated = True
        if self.trainer is not None and self.trainer.training:
            if self._restore_rng:
                torch.set_rng_state(self._resume_state["torch_rng"])
                random.setstate(self._resume_state["python_rng"])
                _set_numpy_state(self._resume_state["numpy_rng"])
                self._restore_rng, self._resume_state = False, None
            self._consumed += batch.num_pos
            self.samples_seen += batch.num_pos
            self.bad_seen += len(batch.bad_ids)
            if self.samples_seen >= 200 and self.bad_seen > self.max_bad_fraction * self.samples_seen:
                raise RuntimeError(
                    f"data: {self.bad_seen} of {self.samples_seen} training samples had an unreadable or over-limit "
                    f"image (> data.max_bad_fraction={self.max_bad_fraction}); last: {batch.bad_ids[-3:]}. Fix the "
                    "data (or run preprocessing, which drops such records with a report)"
                )
        return batch

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
        sampler = None
        # One device: a shuffling sampler that resumes exactly. Several: shuffle=True, which Lightning replaces by
        # a DistributedSampler (a custom sampler would be wrapped and could give ranks different permutations).
        if train and self.world_size == 1:
            sampler = ResumableRandomSampler(len(self.dataset(split)), on_new_epoch=self._new_epoch)
            if self._resume_state is not None:
                sampler.resume(self._resume_state["epoch_seed"], self._resume_state["consumed"])
            self._sampler = sampler
        generator = None
        if split == "val" and self._quiet_val_seed:
            generator, self._quiet_val_seed = torch.Generator().manual_seed(self.seed), False
        return DataLoader(
            self.dataset(split),
            batch_size=self.per_device(batch),
            sampler=sampler,
            generator=generator,
            shuffle=train and sampler is None,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self._pin(),
            persistent_workers=self.persistent_workers,
            prefetch_factor=self.prefetch_factor,
            collate_fn=partial(collate, text_trim_multiple=self.text_trim_multiple),
        )

    def _pin(self) -> bool:
        if self.pin_memory != "auto":
            return bool(self.pin_memory)
        root = getattr(getattr(self.trainer, "strategy", None), "root_device", None)
        return root is not None and root.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)
