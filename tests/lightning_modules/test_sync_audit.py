"""SyncAudit (host-synchronisation audit of training steps) and the synchronisation-free kind selection of the
hard-negative terms."""

import json
import traceback
import warnings

import torch

from lightning_modules.losses.base import index_to_device
from lightning_modules.losses.hard_negative import HardNegativeText, select, take
from lightning_modules.sync_audit import SyncAudit, call_site
from tests.lightning_modules.losses.test_hard_negative_losses import inputs, naive_per_sample


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


def test_audit_is_a_reported_no_op_without_cuda(tmp_path):
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    out = tmp_path / "audit.json"
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SyncAudit(start=0, steps=2, out=str(out))],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Tiny(), torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2))
    rep = json.loads(out.read_text())
    assert rep["steps"] == 0 and "no audited step" in rep["note"]


def test_select_and_take_are_host_index_selection():
    kinds = ["compositional/color", "structure/x", "compositional/position", "compositional/swap_objects"]
    assert select(kinds, None) == [0, 1, 2, 3]
    assert select(kinds, ["compositional/position", "compositional/swap_objects"]) == [2, 3]
    x = torch.arange(8.0).view(4, 2)
    assert take(x, [0, 1, 2, 3]) is x  # everything kept: no copy
    torch.testing.assert_close(take(x, [3, 1]), x[[3, 1]])
    assert take(x, []).shape == (0, 2)
    idx = index_to_device([2, 0], "cpu")
    assert idx.dtype == torch.long and idx.tolist() == [2, 0]


def test_per_sample_kind_selection_with_samples_without_negatives_matches_naive():
    # kinds select negatives of samples 0 and 3 only: samples 1 and 2 have none and must not enter the mean
    x = inputs()
    x.img_BD.requires_grad_(True)
    out = HardNegativeText(mode="per_sample", kinds=["compositional/"])(x)
    keep = [0, 1, 3]
    ref = naive_per_sample(x.img_BD, x.txt_BD, x.txt_neg_ND[keep], x.txt_neg_owner_N[keep], x.logit_scale)
    torch.testing.assert_close(out["hardneg_text_loss"], ref)
    assert float(out["hardneg_text_count"]) == 3
    out["hardneg_text_loss"].backward()
    grad = x.img_BD.grad
    assert grad[[1, 2]].abs().max() == 0 and grad[[0, 3]].abs().max() > 0
