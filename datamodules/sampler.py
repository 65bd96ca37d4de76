"""A shuffling sampler that a resumed run can continue exactly.

`ResumableRandomSampler` draws each epoch's order exactly as torch's `RandomSampler` does (one int64 seed from the
global torch RNG at the epoch's first index, then `randperm`), so a run that never resumes is bit-identical to one
with `shuffle=True`. It remembers that seed; `state_dict()` of the DataModule stores it with the number of samples
the training loop consumed in the epoch, and after `load_state_dict` the first epoch replays the same permutation
from that position without drawing a new seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class ResumableRandomSampler(Sampler[int]):
    def __init__(self, num_samples: int, on_new_epoch: Callable[[], None] | None = None) -> None:
        self.num_samples = num_samples
        self.on_new_epoch = on_new_epoch
        self.epoch_seed: int | None = None
        self._resume: tuple[int, int] | None = None  # (epoch seed, first position)

    def resume(self, epoch_seed: int, start: int) -> None:
        """The next iteration replays the permutation of `epoch_seed` from position `start`."""
        self._resume = (int(epoch_seed), int(start))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            seed, start = self._resume
            self._resume = None
        else:
            seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0
            if self.on_new_epoch is not None:
                self.on_new_epoch()
        self.epoch_seed = seed
        generator = torch.Generator()
        generator.manual_seed(seed)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()[start:]
