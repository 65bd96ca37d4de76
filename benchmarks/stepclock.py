"""A training-step clock that `benchmarks/loader_throughput.py` adds to every run it measures, the same code for
any checkout of the project (an earlier commit included: it needs only Lightning and a batch with `num_pos`), so
before/after runs are measured alike, whatever the module logs itself.

Throughput over the steps after `skip`: samples (positives x world size) over the host time from the start of step
`skip` to the start of the last step. With an asynchronous GPU the host runs ahead between synchronisations (the
loggers synchronise on their logging steps), so only such a window, not one step's interval, measures the device's
rate. The data wait is the time between a step's end and the next step's start (fetching the batch), summed over
the same window, as a share of it. Rank 0 writes one JSON object to `out` when training ends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class StepClock(L.Callback):
    def __init__(self, out: str, skip: int = 30) -> None:
        self.out, self.skip = Path(out), skip
        self.starts: list[float] = []
        self.waits: list[float] = []  # waits[k - 1]: before step k
        self.t_end: float | None = None
        self.global_batch = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.starts:
            self.waits.append(max(now - self.t_end, 0.0) if self.t_end is not None else 0.0)
        self.starts.append(now)
        self.global_batch = batch.num_pos * trainer.world_size

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.t_end = time.perf_counter()

    def summary(self) -> dict:
        skip = min(self.skip, max(len(self.starts) - 2, 0))
        steps = len(self.starts) - 1 - skip
        if steps < 1:
            return {"clock_steps": 0}
        span = self.starts[-1] - self.starts[skip]
        return {
            "clock_steps": steps,
            "clock_samples_per_second": round(steps * self.global_batch / span, 2),
            "clock_data_wait_fraction": round(sum(self.waits[skip:]) / span, 4),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.summary()))
