"""Captioner GRPO (lightning_modules/reflection/grpo.py): the math's edge cases and two real training steps."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.negatives.text_rules import TextRules
from datamodules.world import World
from lightning_modules.inference import ClipScorer
from lightning_modules.model_factory import ModelSpec
from lightning_modules.reflection.captioner import build_tiny_captioner, load_captioner, synthetic_pairs
from lightning_modules.reflection.grpo import (
    CaptionerGRPO,
    CaptionReward,
    clipped_surrogate,
    group_advantages,
    image_batches,
    kl_k3,
)


def test_equal_rewards_give_zero_advantage_and_advantages_are_standardised_per_group():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]]))
    assert torch.equal(adv[0], torch.zeros(4))
    assert adv[1].mean().abs() < 1e-6 and abs(adv[1].std(unbiased=False).item() - 1) < 1e-3


def test_kl_is_zero_at_the_reference_and_positive_elsewhere():
    lp = torch.log(torch.tensor([0.2, 0.5, 0.9]))
    assert torch.equal(kl_k3(lp, lp), torch.zeros(3))
    assert (kl_k3(lp, lp - 0.3) > 0).all() and (kl_k3(lp, lp + 0.3) > 0).all()


def test_clipped_surrogate_caps_the_ratio_in_the_direction_of_the_advantage():
    old = torch.zeros(2)
    new = torch.tensor([1.0, 1.0])  # ratio e ≈ 2.72
    loss = clipped_surrogate(new, old, torch.tensor([1.0, -1.0]), clip=0.2)
    assert loss[0].item() == pytest.approx(-1.2)  # positive advantage: capped at 1 + clip
    assert loss[1].item() == pytest.approx(
        torch.e, rel=1e-5
    )  # negative advantage: the unclipped (worse) term


def test_two_grpo_steps_train_the_policy_and_log_every_term(tmp_path):
    world = World(seed=0)
    model, processor = load_captioner(
        build_tiny_captioner(tmp_path / "cap", hidden=64, layers=2, vision_hidden=32)
    )
    spec = ModelSpec(name="tiny-vit")
    scorer = ClipScorer(spec.build().eval(), spec.image_transform(), spec.tokenizer())
    reward = CaptionReward(scorer, TextRules(kinds=["color", "size"]), target_len=4)
    module = CaptionerGRPO(model, processor, reward, group_size=3, lr=1e-3, max_new_tokens=6, world=world)
    before = [p.detach().clone() for p in module.policy.parameters()]
    images, _, scenes = synthetic_pairs(world, "train", 16)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=image_batches(images, scenes, batch_size=2))
    m = trainer.callback_metrics
    for key in (
        "reward",
        "sim",
        "margin",
        "attention",
        "length_penalty",
        "kl",
        "attention_share",
        "truth_rate",
    ):
        assert f"grpo/{key}" in m and torch.isfinite(m[f"grpo/{key}"]), key
    assert m["grpo/kl"] >= 0 and 0 <= m["grpo/attention_share"] <= 1
    changed = any(not torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))
    assert changed and all(not p.requires_grad for p in module.ref.parameters())


def test_oracle_truth_term_adds_exactly_its_weight_for_true_captions():
    world = World(seed=0)
    spec = ModelSpec(name="tiny-vit")
    scorer = ClipScorer(spec.build().eval(), spec.image_transform(), spec.tokenizer())
    images, caps, scenes = synthetic_pairs(world, "train", 4, image_size=48)
    wrong = [
        c.replace(w, "nothing") for c, w in zip(caps, [c.split()[-1] for c in caps])
    ]  # unparsable: false
    texts = caps[:2] + wrong[2:]
    n = torch.full((4,), 5)
    plain = CaptionReward(scorer, None)(images, texts, n, None, scenes)
    oracle = CaptionReward(scorer, None, w_truth=2.0, world=world)(images, texts, n, None, scenes)
    torch.testing.assert_close(oracle["truth_oracle"], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(oracle["reward"] - plain["reward"], 2.0 * oracle["truth_oracle"])
    with pytest.raises(ValueError, match="needs the world"):
        CaptionReward(scorer, None, w_truth=1.0)
    with pytest.raises(ValueError, match="no scene graphs"):
        CaptionReward(scorer, None, w_truth=1.0, world=world)(images, texts, n)
