"""Console output: one progress bar over the run's steps, and open_clip's INFO chatter muted (warnings kept)."""

from __future__ import annotations

import logging

import torch

from lightning_modules.console import StepProgressBar, quiet_libraries


def test_open_clip_info_records_are_dropped_warnings_kept(caplog):
    quiet_libraries()
    root = logging.getLogger()

    def record(level, path, msg):
        return logging.LogRecord("root", level, path, 1, msg, None, None)

    keep = [f.filter for f in root.filters]
    assert not all(
        f(record(logging.INFO, "/x/site-packages/open_clip/factory.py", "Parsing model")) for f in keep
    )
    assert all(
        f(record(logging.WARNING, "/x/site-packages/open_clip/factory.py", "No weights")) for f in keep
    )
    assert all(
        f(record(logging.INFO, "/work/datamodules/datamodule.py", "train split: 10 records")) for f in keep
    )
    quiet_libraries()  # idempotent
    assert sum(type(f).__name__ == "_QuietLibraries" for f in root.filters) == 1


def test_progress_bar_reports_val_r1(monkeypatch):
    class T:
        callback_metrics = {"val/i2t_r1": torch.tensor(10.0), "val/t2i_r1": torch.tensor(20.0)}

    monkeypatch.setattr(
        "lightning.pytorch.callbacks.TQDMProgressBar.get_metrics", lambda self, t, m: {"v_num": 0}
    )
    assert StepProgressBar().get_metrics(T(), None) == {"val_R@1": "15.0"}
