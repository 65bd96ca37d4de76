"""SyncAudit: the host-synchronisation audit of training steps (its GPU check is in tests/test_gpu.py)."""

import json
import traceback
import warnings
from collections import Counter

import torch

from lightning_modules.sync_audit import SyncAudit, call_site


def frame(filename, lineno, name):
    return traceback.FrameSummary(filename, lineno, name)


def test_call_site_keeps_own_frames_innermost_first():
    stack = [
        frame("/usr/lib/python3/threading.py", 1, "run"),
        frame("/x/site-packages/lightning/pytorch/loops/training_epoch_loop.py", 10, "advance"),
        frame("/repo/lightning_modules/clip_module.py", 20, "training_step"),
        frame("/repo/lightning_modules/losses/hard_negative.py", 30, "forward"),
        frame("/x/site-packages/torch/_tensor.py", 40, "__getitem__"),
    ]
    assert call_site(stack, depth=2) == "hard_negative.py:30 forward <- clip_module.py:20 training_step"
    assert call_site(stack[:1]) == "(no own frame)"


def test_record_counts_synchronisations_per_step_and_passes_other_warnings_on(tmp_path):
    audit = SyncAudit(start=0, steps=2, out=str(tmp_path / "s.json"))
    seen = []
    audit._saved = lambda message, *a, **k: seen.append(str(message))
    audit.per_step.append(0)
    audit.record("called a synchronizing CUDA operation", UserWarning, "f.py", 1)
    audit.record("something else", UserWarning, "f.py", 1)
    audit.per_step.append(0)
    audit.logging_steps.append(1)
    audit.record("called a synchronizing CUDA operation", UserWarning, "f.py", 1)
    audit.record("called a synchronizing CUDA operation", UserWarning, "f.py", 1)
    rep = audit.report()
    assert rep["syncs_per_step"] == [1, 2] and rep["syncs_total"] == 3
    assert rep["syncs_per_non_logging_step"] == 1.0  # step 1 is a logging step
    assert sum(rep["sites"].values()) == 3
    assert seen == ["something else"]


def _fit_tiny(callbacks: list):
    """A 3-step CPU fit of a one-layer module with these callbacks; returns the trainer."""
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2))
    return trainer


def test_audit_is_a_reported_no_op_without_cuda(tmp_path):
    out = tmp_path / "audit.json"
    _fit_tiny([SyncAudit(start=0, steps=2, out=str(out))])
    rep = json.loads(out.read_text())
    assert rep["steps"] == 0 and "no audited step" in rep["note"]


def test_audit_moves_itself_first_so_every_step_owns_its_callbacks_syncs(tmp_path):
    """A step's window opens in the audit's `on_train_batch_start`; a callback called before it (Lightning calls
    them in list order) had its logging-step syncs counted in the previous step (LearningRateMonitor, H100). The
    audit puts itself first at setup, and every callback still runs each hook once."""
    import lightning as L

    calls = Counter()

    class Recorder(L.Callback):
        def setup(self, trainer, pl_module, stage):
            calls["setup"] += 1

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            calls["batch_start"] += 1

    audit, first, last = SyncAudit(start=0, steps=2, out=str(tmp_path / "a.json")), Recorder(), Recorder()
    trainer = _fit_tiny([first, audit, last])
    assert trainer.callbacks[:3] == [audit, first, last]
    assert calls == {"setup": 2, "batch_start": 6}  # two recorders, 3 steps each: none skipped or repeated
