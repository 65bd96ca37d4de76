"""Where does a training step make the host wait for the GPU? A callback that lists every synchronising CUDA
operation of a window of training steps with the Python call chain that issued it.

A host synchronisation inside the step (`.item()`, a boolean-mask index, a copy from pageable memory, `bool(t)`)
stops the CPU from running ahead of the GPU: the GPU then idles while the host fetches the next batch and launches
the next step, which shows up as data wait and as framework overhead. Use on a CUDA run:

    python train.py trainer=gpu ... +callbacks.sync_audit._target_=lightning_modules.sync_audit.SyncAudit \\
        +callbacks.sync_audit.start=20 +callbacks.sync_audit.steps=10 +callbacks.sync_audit.out=syncs.json

The report (JSON) counts synchronisations per step and groups them by call site (the innermost frames of this
project or Lightning). It uses `torch.cuda.set_sync_debug_mode("warn")`: what torch itself knows to synchronise.
A `non_blocking` copy from *pageable* host memory also waits for the stream (CUDA's rule) but is not reported;
`lightning_modules.losses.base.index_to_device` is the way to move host indices without it.
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch

_MARK = "synchronizing"  # torch's message: "called a synchronizing CUDA operation"
_OWN = ("lightning_modules", "datamodules", "lightning/pytorch", "lightning/fabric", "benchmarks", "train.py")


def call_site(stack: list[traceback.FrameSummary], depth: int = 4) -> str:
    """The innermost `depth` frames that belong to this project or Lightning, innermost first."""
    own = [
        f for f in reversed(stack) if any(p in f.filename for p in _OWN) and "sync_audit" not in f.filename
    ]
    return (
        " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in own[:depth]) or "(no own frame)"
    )


class SyncAudit(L.Callback):
    """Args: start: first global step audited (after warm-up); steps: how many; out: JSON report path (default:
    `<trainer.log_dir or default_root_dir>/sync_audit.json`). No-op (report says so) when not on CUDA."""

    def __init__(self, start: int = 20, steps: int = 10, out: str | None = None) -> None:
        self.start, self.steps, self.out = start, steps, out
        self.sites: Counter[str] = Counter()
        self.per_step: list[int] = []
        self.logging_steps: list[int] = []
        self._active = False
        self._saved: Any = None
        self._filters: Any = None

    # -- recording (a warnings hook; callable directly in tests) ---------------------------------------------
    def record(
        self, message: Any, category: Any = None, filename: str = "", lineno: int = 0, *a, **k
    ) -> None:
        if _MARK in str(message):
            self.sites[call_site(traceback.extract_stack()[:-1])] += 1
            if self.per_step:
                self.per_step[-1] += 1
        elif self._saved is not None:
            self._saved(message, category, filename, lineno, *a, **k)

    def _on(self) -> None:
        self._active, self._saved = True, warnings.showwarning
        self._filters = warnings.filters[:]
        warnings.simplefilter("always")
        warnings.showwarning = self.record
        torch.cuda.set_sync_debug_mode("warn")

    def _off(self) -> None:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning, warnings.filters[:] = self._saved, self._filters
        self._active, self._saved = False, None

    # -- hooks ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Runs first among the callbacks: a step's window opens in this callback's `on_train_batch_start`, so a
        callback called before it (Lightning calls them in list order) would have its syncs counted in the
        previous step (seen on an H100: LearningRateMonitor's logging-step syncs landed in the step before)."""
        if trainer.callbacks and trainer.callbacks[0] is not self:
            # a new list, not an edit in place: Lightning's hook loop is iterating the old one right now
            trainer.callbacks = [self] + [c for c in trainer.callbacks if c is not self]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if not torch.cuda.is_available() or pl_module.device.type != "cuda":
            return
        step = trainer.global_step
        if step == self.start and not self._active:
            self._on()
        if self._active:
            self.per_step.append(0)
            if (step + 1) % max(trainer.log_every_n_steps, 1) == 0:
                self.logging_steps.append(len(self.per_step) - 1)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._active and len(self.per_step) >= self.steps:
            self._off()
            self.write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active:  # training ended inside the window: report the steps audited
            self._off()
            self.write(trainer)
        elif not self.per_step:
            self.write(trainer, note="no audited step (not on CUDA, or training ended before `start`)")

    def report(self) -> dict[str, Any]:
        plain = [n for i, n in enumerate(self.per_step) if i not in self.logging_steps]
        return {
            "steps": len(self.per_step),
            "syncs_total": sum(self.per_step),
            "syncs_per_step": self.per_step,
            "logging_step_indices": self.logging_steps,
            "syncs_per_non_logging_step": (sum(plain) / len(plain)) if plain else None,
            "sites": dict(self.sites.most_common()),
        }

    def _path(self, trainer: L.Trainer) -> str:
        return self.out or str(Path(trainer.log_dir or trainer.default_root_dir) / "sync_audit.json")

    def write(self, trainer: L.Trainer, note: str | None = None) -> None:
        path = Path(self._path(trainer))
        path.parent.mkdir(parents=True, exist_ok=True)
        rep = self.report() | ({"note": note} if note else {})
        path.write_text(json.dumps(rep, indent=1))
        print(
            json.dumps({"sync_audit": str(path), **{k: rep[k] for k in ("steps", "syncs_total")}}), flush=True
        )
