"""Where does a training step's time go: host or device, and in which operators? A callback that runs
`torch.profiler` over a window of training steps of a real run (real loader, losses, hooks) and writes a JSON
summary:

    python train.py trainer=gpu ... +callbacks.step_profile._target_=lightning_modules.step_profile.StepProfile \\
        +callbacks.step_profile.start=25 +callbacks.step_profile.steps=5 +callbacks.step_profile.out=prof.json

- `wall_ms_per_step`: host time per step over the window, synchronised at both ends (so it is the step's real
  duration, the data fetch between steps included);
- `device_ms_per_step`: the operators' own device time (kernels) per step; `device_busy` = device / wall. Near 1:
  the GPU is the limit (make the step cheaper); well below 1: the GPU idles while the host prepares the next kernels
  or batch (host-bound: see `top_cpu`, and `SyncAudit` for waits);
- `top_device` / `top_cpu`: the operators with the most self device / self CPU time per step (ms) and calls per step;
- `host_ms_each_step`: each step's host interval (unsynchronised but the last): a long one marks where the host
  waited (a logging step's synchronisation, a slow batch).

On a CPU the device fields are null and `top_cpu` is the whole story. The profiler adds host time of its own
(recording every operator); compare the shares, not the absolute wall time, with unprofiled runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepProfile(L.Callback):
    """Args: start: first global step profiled (after warm-up); steps: how many; out: JSON path (default:
    `<trainer.log_dir or default_root_dir>/step_profile.json`); top: operators listed per table; trace: also write a
    Chrome trace (`<out>.trace.json`, large) for `chrome://tracing` / Perfetto."""

    def __init__(
        self, start: int = 20, steps: int = 5, out: str | None = None, top: int = 15, trace: bool = False
    ) -> None:
        if steps < 1 or start < 0:
            raise ValueError(f"StepProfile: start >= 0 and steps >= 1, got start={start}, steps={steps}")
        self.start, self.steps, self.out, self.top, self.trace = start, steps, out, top, trace
        self._prof: profile | None = None
        self._t0 = 0.0
        self._seen = 0
        self._positives: int | None = None
        self._ends: list[float] = []
        self.report: dict[str, Any] | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if self._prof is None and self.report is None and trainer.global_step == self.start:
            _sync(pl_module.device)
            cuda = pl_module.device.type == "cuda"
            self._prof = profile(
                activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            )
            self._prof.__enter__()
            self._t0, self._seen, self._ends = time.perf_counter(), 0, []
            self._positives = getattr(batch, "num_pos", None)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if self._prof is None:
            return
        self._seen += 1
        self._ends.append(time.perf_counter())
        if self._seen >= self.steps:
            self._finish(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._prof is not None:  # training ended inside the window: report the steps profiled
            self._finish(trainer, pl_module)

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module.device)
        wall = time.perf_counter() - self._t0
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        self.report = summarize(
            prof, steps=self._seen, wall_s=wall, top=self.top, device=pl_module.device.type
        )
        # host time from the window's start to each step's end, unsynchronised: where the host waited (a logging
        # step's synchronisation, a slow batch) shows as one long step; the last is the synchronised total
        marks = [self._t0, *self._ends[:-1], self._t0 + wall]
        host_ms = [round((b - a) * 1e3, 2) for a, b in zip(marks, marks[1:])]
        self.report |= {"start": self.start, "positives": self._positives, "host_ms_each_step": host_ms}
        if trainer.is_global_zero:
            path = Path(self.out or Path(trainer.log_dir or trainer.default_root_dir) / "step_profile.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.report, indent=1))
            if self.trace:
                prof.export_chrome_trace(str(path.with_suffix(".trace.json")))
            keys = ("steps", "wall_ms_per_step", "device_ms_per_step", "device_busy")
            print(json.dumps({"step_profile": str(path)} | {k: self.report[k] for k in keys}), flush=True)


def summarize(prof: profile, *, steps: int, wall_s: float, top: int, device: str) -> dict[str, Any]:
    """Per-step figures from a finished profiler: wall and device time, and the top operators by self time. The
    device total sums the device-side events (kernels, copies; as torch's own table does); the operator tables list
    host-side operators, a device time being that of the kernels the operator itself launched."""
    from torch.autograd import DeviceType

    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    ops = [e for e in events if e.device_type == DeviceType.CPU]

    def table(attr: str) -> list[dict[str, Any]]:
        rows = sorted(ops, key=lambda e: getattr(e, attr), reverse=True)[:top]
        return [
            {
                "op": e.key,
                "ms_per_step": round(getattr(e, attr) / 1e3 / steps, 3),
                "calls_per_step": e.count / steps,
            }
            for e in rows
            if getattr(e, attr) > 0
        ]

    cuda = device == "cuda"
    wall_ms = wall_s * 1e3 / steps
    device_ms = (
        sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e3 / steps
        if cuda
        else None
    )
    return {
        "steps": steps,
        "device": device,
        "wall_ms_per_step": round(wall_ms, 3),
        "device_ms_per_step": None if device_ms is None else round(device_ms, 3),
        "device_busy": None if device_ms is None else round(device_ms / wall_ms, 4),
        "aten_ops_per_step": sum(e.count for e in ops if e.key.startswith("aten::")) / steps,
        "top_device": table("self_device_time_total") if cuda else [],
        "top_cpu": table("self_cpu_time_total"),
    }
