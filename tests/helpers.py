"""Test helpers: `run_if` gates tests on hardware (Lightning's RunIf idea), so a GPU test carries the `gpu` marker
(`make test-gpu` selects it, `make test` deselects it) and skips with a reason on a machine without one."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback


def run_if(*, min_cuda_gpus: int = 0):
    """Decorator: marks a test `gpu` and skips it unless at least `min_cuda_gpus` CUDA devices are visible."""

    def wrap(fn):
        if min_cuda_gpus:
            fn = pytest.mark.gpu(fn)
            fn = pytest.mark.skipif(
                torch.cuda.device_count() < min_cuda_gpus,
                reason=f"needs {min_cuda_gpus} CUDA GPU(s); run `make test-gpu` on a GPU machine",
            )(fn)
        return fn

    return wrap


class KillAtStep(Callback):
    """A Lightning callback that SIGKILLs its own process after training step `step` (a crash, for resume tests)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
