"""What a training run prints: a progress bar over the whole run (global step of max_steps, ETA, loss, last val
R@1) instead of Lightning's per-epoch bar ("Epoch 3/-2" with step-based runs), and libraries' INFO chatter muted.

Selected in `conf/callbacks/default.yaml` (`progress_bar`); dropped automatically with
`trainer.enable_progress_bar=false`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n


class StepProgressBar(TQDMProgressBar):
    """One bar for the run: `train 340/800 [01:12<01:38, loss=2.61, val_R@1=14.2]`. Falls back to Lightning's
    per-epoch bar when the run is epoch-based (max_steps = -1)."""

    def __init__(self, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def _step_based(self, trainer) -> bool:
        return trainer.max_steps is not None and trainer.max_steps > 0

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        if not self._step_based(trainer):
            return super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # first epoch (or a resumed run): one bar for all steps
            bar.reset(total=trainer.max_steps)
            bar.initial = 0
            _update_n(bar, trainer.global_step)
            bar.set_description("train")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._step_based(trainer):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = trainer.global_step
        bar = self.train_progress_bar
        if bar is not None and self._should_update(n, bar.total):
            _update_n(bar, n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        m = trainer.callback_metrics  # tensors; read only when the bar refreshes (every `refresh_rate` steps)
        if "train/loss" in m:
            items["loss"] = f"{float(m['train/loss']):.3g}"
        if "val/i2t_r1" in m and "val/t2i_r1" in m:
            items["val_R@1"] = f"{(float(m['val/i2t_r1']) + float(m['val/t2i_r1'])) / 2:.1f}"
        return items


class _QuietLibraries(logging.Filter):
    """Drops INFO/DEBUG records that open_clip logs on the root logger (model-config parsing, tokenizer choice,
    ...; a dozen lines per model build) and Lightning's product tips. Warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if "open_clip" in record.pathname.replace("\\", "/").split("/"):
            return False
        return not str(record.msg).startswith("💡 Tip")


_FILTER = _QuietLibraries()


def quiet_libraries() -> None:
    """Installs the filter on the root logger and Lightning's info logger (idempotent)."""
    for name in ("", "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
