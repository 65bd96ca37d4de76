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


def read_wandb_offline(run_dir, wait_s: float = 30.0) -> dict:
    """Reads an offline W&B run folder back (the `run-<id>.wandb` record log: LevelDB-style blocks of protobuf
    `Record`s): {"name", "group", "job_type", "config": {key: value}, "history": [{key: value}], "summary": {...}}.
    Waits up to `wait_s` for the log's `exit` record, in case W&B's service process is still writing the last
    records after `wandb.finish()` returns: a CI run (2026-11-27) once read a log without the final evaluation rows
    that 5 other runs of the same test had; a late writer is the likely cause, not a proven one."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + wait_s
    while True:
        out = _read_wandb_log(next(Path(run_dir).glob("run-*.wandb")).read_bytes())
        if out.pop("complete") or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_wandb_log(data: bytes) -> dict:
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    assert data[:4] == b":W&B", "not a W&B record log"

    def records():
        pos, block, buf = 7, 32768, b""
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:
                pos += left
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if pos + 7 + length > len(data):  # a record still being written
                return
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind == 0:
                return
            buf = chunk if kind in (1, 2) else buf + chunk
            if kind in (1, 4):
                yield buf

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    out: dict = {"config": {}, "history": [], "summary": {}, "complete": False}
    for raw in records():
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out |= {"name": rec.run.display_name, "group": rec.run.run_group, "job_type": rec.run.job_type}
            out["config"] |= {key(i): json.loads(i.value_json) for i in rec.run.config.update}
        elif kind == "config":
            out["config"] |= {key(i): json.loads(i.value_json) for i in rec.config.update}
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"] |= {key(i): json.loads(i.value_json) for i in rec.summary.update}
        elif kind == "exit":
            out["complete"] = True
    return out


def free_port() -> int:
    """A free local TCP port (for gloo process groups and test servers)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def evaluate_like_the_run(cfg_factory, ckpt, metrics: dict, out_dir, *overrides: str) -> tuple[dict, dict]:
    """evaluate.py on a training run's checkpoint with the benchmark sizes the training tests use; returns (the
    scores evaluate.py gives, the `eval/*` scores the run itself printed, prefix removed) for the caller to compare."""
    from evaluate import evaluate

    eval_cfg = cfg_factory(
        f"ckpt_path={ckpt}",
        "benchmark.synthetic.num_items=24",
        "benchmark.synthetic.num_winoground=12",
        *overrides,
        config_name="evaluate",
    )
    eval_cfg.paths.output_dir = str(out_dir)
    trained = {k.removeprefix("eval/"): v for k, v in metrics.items() if k.startswith("eval/")}
    return evaluate(eval_cfg), trained


def train_rows(run_dir) -> list[dict[str, str]]:
    """The rows of a run's CSV log (`logger=csv`) that carry a training step's values (`train/loss`)."""
    import csv
    from pathlib import Path

    with (Path(run_dir) / "csv" / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def train_series(run_dir, *keys: str) -> dict[str, list[float]]:
    """Per-step values of `keys` from a run's CSV log, in step order."""
    rows = train_rows(run_dir)
    return {k: [float(r[k]) for r in rows] for k in keys}


def train_eager_and_compiled(cfg_factory, out_dir, *overrides: str) -> dict[str, tuple[dict, object]]:
    """train.py on the same overrides without and with `module.compile.enabled=true`, in out_dir/eager and
    out_dir/compiled; returns {"eager" | "compiled": (the run's metrics, its run dir)}."""
    from train import train

    runs = {}
    for name, extra in {"eager": [], "compiled": ["module.compile.enabled=true"]}.items():
        cfg = cfg_factory(*overrides, *extra)
        cfg.paths.output_dir = str(out_dir / name)
        runs[name] = (train(cfg), out_dir / name)
    return runs
