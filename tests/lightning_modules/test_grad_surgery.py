"""Gradient surgery between two groups of loss terms, against hand-computed references."""

import pytest
import torch

from lightning_modules.grad_surgery import GradSurgery

GROUPS = [["contrastive"], ["rel_text", "intra_text"]]


def _g(*v):
    return [torch.tensor(v, dtype=torch.float64)]


def test_conflicting_gradients_are_projected_as_by_hand():
    a, b = _g(1.0, 0.0), _g(-1.0, 1.0)  # dot -1, |a|^2 1, |b|^2 2: conflict
    out, stats = GradSurgery(GROUPS, "pcgrad").combine(a, b)
    # a - (dot/|b|^2) b = (1,0) + 0.5(-1,1) = (0.5, 0.5); b - (dot/|a|^2) a = (-1,1) + (1,0) = (0, 1)
    assert torch.allclose(out[0], torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert stats["conflict"].item() == 1.0
    assert stats["cos"].item() == pytest.approx(-1 / 2**0.5)
    out, _ = GradSurgery(GROUPS, "protect").combine(a, b)
    assert torch.allclose(out[0], torch.tensor([1.0, 1.0], dtype=torch.float64))  # a + (0, 1)
    out, _ = GradSurgery(GROUPS, "measure").combine(a, b)
    assert torch.allclose(out[0], torch.tensor([0.0, 1.0], dtype=torch.float64))  # the plain sum


def test_agreeing_gradients_are_summed_unchanged():
    a, b = _g(1.0, 2.0), _g(0.5, 0.0)
    for mode in ("pcgrad", "protect"):
        out, stats = GradSurgery(GROUPS, mode).combine(a, b)
        assert torch.allclose(out[0], torch.tensor([1.5, 2.0], dtype=torch.float64))
        assert stats["conflict"].item() == 0.0


def test_backward_target_has_the_combined_gradient():
    w = torch.nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
    terms = {
        "contrastive_loss": (w * torch.tensor([1.0, 0.0], dtype=torch.float64)).sum(),  # grad (1, 0)
        "rel_text_loss": (w * torch.tensor([-1.0, 0.5], dtype=torch.float64)).sum(),  # grad (-1, 0.5)
        "intra_text_loss": (w * torch.tensor([0.0, 0.5], dtype=torch.float64)).sum(),  # grad (0, 0.5)
        "rel_text_count": torch.tensor(3.0),  # not a loss term: ignored
    }
    target, stats = GradSurgery(GROUPS, "pcgrad").backward_target(terms, [w])
    target.backward()
    # b = (-1, 1) as above: pcgrad sum (0.5, 1.5)
    assert torch.allclose(w.grad, torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert stats["conflict"].item() == 1.0


def test_config_mistakes_name_the_key():
    with pytest.raises(ValueError, match="mode must be"):
        GradSurgery(GROUPS, "sum")
    with pytest.raises(ValueError, match="in both groups"):
        GradSurgery([["a"], ["a", "b"]])
    with pytest.raises(ValueError, match=r"loss terms \['hardneg_text'\] are in no group"):
        GradSurgery(GROUPS).group_losses(
            {"contrastive_loss": torch.tensor(1.0), "hardneg_text_loss": torch.tensor(1.0)}
        )


def test_training_with_grad_surgery_logs_the_groups_cosine(cfg_factory, tmp_path):
    """experiment=hardneg_pcgrad trains end to end; measure mode gives the same weights as plain hardneg."""
    import csv

    from train import train

    common = ["trainer.max_steps=2", "trainer.log_every_n_steps=1", "evaluate_after=false", "run_test=false"]
    common += ["trainer.val_check_interval=2", "data.source.num_val=32"]
    train(cfg_factory("experiment=hardneg_pcgrad", *common))
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    cos = [float(r["train/grad_cos"]) for r in rows if r.get("train/grad_cos")]
    assert len(cos) == 2 and all(-1.0 <= c <= 1.0 for c in cos)

    def weights(*ov):  # each run writes the same run folder: read its checkpoint right after it
        train(cfg_factory(*ov, *common))
        return torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    plain = weights("experiment=hardneg")
    measured = weights("experiment=hardneg_pcgrad", "module.grad_surgery.mode=measure")
    for k, v in plain.items():
        assert torch.allclose(v, measured[k], atol=1e-5), k
    split = weights("experiment=hardneg_split_adam")  # per-source Adam moments: a different update
    assert any(not torch.allclose(v, split[k]) for k, v in plain.items() if v.is_floating_point())
    with pytest.raises(ValueError, match="mode=split needs optimizer=split_adamw"):
        train(cfg_factory("experiment=hardneg_pcgrad", "module.grad_surgery.mode=split", *common))


def test_split_adamw_is_adamw_with_one_source_and_sums_two_normalised_updates():
    from lightning_modules.optim import SplitAdamW

    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    kw = {"lr": 1e-2, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 0.1}
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    ref, ours = torch.optim.AdamW([a], **kw), SplitAdamW([b], **kw)
    for _ in range(4):
        g = torch.randn(5, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert torch.allclose(a, b, atol=1e-12)
    # two sources, first step: each Adam update is lr * g / (|g| + eps) = lr * sign(g); they add
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    opt = SplitAdamW([p], lr=0.1, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.0)
    p.grad = torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)
    p.grad_b = torch.tensor([100.0, 7.0, -0.01], dtype=torch.float64)
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([1 - 0.2, 1.0, 1.0], dtype=torch.float64))
    assert p.grad_b is None  # consumed


def test_split_mode_puts_the_second_group_on_grad_b():
    w = torch.nn.Parameter(torch.tensor([0.3, -0.7], dtype=torch.float64))
    terms = {
        "contrastive_loss": (w * torch.tensor([1.0, 0.0], dtype=torch.float64)).sum(),
        "rel_text_loss": (w * torch.tensor([-1.0, 0.5], dtype=torch.float64)).sum(),
    }
    target, _ = GradSurgery(GROUPS, "split").backward_target(terms, [w])
    target.backward()
    assert torch.allclose(w.grad, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(w.grad_b, torch.tensor([-1.0, 0.5], dtype=torch.float64))
