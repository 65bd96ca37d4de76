"""Checkpoint writes that survive a kill at any instant, on any filesystem.

Lightning's default save writes a temp file through fsspec (in `$TMPDIR`, possibly another filesystem) and moves
it without fsync: a kill during the move can leave a truncated `last.ckpt` and stray temp files. `AtomicCheckpointIO`
serialises into a temp file in the checkpoint's own folder, fsyncs it, `os.replace`s it into place and fsyncs the
folder (`datamodules.atomic`), and removes temp files a killed writer left behind. Selected by the trainer configs
(`plugins: [{_target_: lightning_modules.checkpoint_io.AtomicCheckpointIO}]`); local paths only (a remote URL falls
back to Lightning's writer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from datamodules.atomic import atomic_save, clean_stale_temps


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path.parent)  # leftovers of killed writers
        atomic_save(lambda f: torch.save(checkpoint, f), path)
