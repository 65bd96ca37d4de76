"""The trainable tiny captioner (lightning_modules/reflection/captioner.py): offline build, SFT labels, learning,
generation and the exact truth metric."""

from __future__ import annotations

import pytest

from datamodules.world import World
from datamodules.world.scene import Obj, Scene
from lightning_modules.reflection.captioner import (
    build_tiny_captioner,
    generate_captions,
    load_captioner,
    sft_batch,
    synthetic_pairs,
    train_sft,
    truth_rate,
    world_words,
)

WORLD = World(seed=0)


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    path = build_tiny_captioner(tmp_path_factory.mktemp("cap"), hidden=64, layers=2, vision_hidden=32)
    return load_captioner(path)


def test_every_caption_word_is_in_the_vocabulary(captioner):
    _, processor = captioner
    _, captions, _ = synthetic_pairs(WORLD, "train", 200)
    unk = processor.tokenizer.convert_tokens_to_ids("<unk>")
    for c in captions:
        assert unk not in processor.tokenizer(c, add_special_tokens=False).input_ids, c
    assert {"left", "crosses", "three"} <= set(world_words())


def test_sft_labels_cover_only_the_caption(captioner):
    _, processor = captioner
    images, captions, _ = synthetic_pairs(WORLD, "train", 2)
    batch = sft_batch(processor, images, captions)
    for row, cap in zip(batch["labels"], captions):
        kept = row[row != -100].tolist()
        expected = processor.tokenizer(f"{cap} <|im_end|>", add_special_tokens=False).input_ids
        assert kept == expected


def test_sft_overfits_a_small_set_and_generation_reads_back(captioner):
    model, processor = captioner
    images, captions, scenes = synthetic_pairs(WORLD, "train", 8)
    losses = train_sft(model, processor, images, captions, steps=60, batch_size=8, lr=3e-3, log_every=0)
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    out = generate_captions(model, processor, images)
    assert len(out) == 8 and all(isinstance(c, str) and c for c in out)
    assert truth_rate(out, scenes, WORLD)["parse_rate"] > 50  # it learned the grammar of its 8 captions


def test_truth_rate_is_exact_on_the_scene_graph():
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.5), Obj("square", "blue", "large", 0.8, 0.5)))
    res = truth_rate(["a small red circle", "a large red square", "not a caption"], [scene] * 3, WORLD)
    assert res["truth_rate"] == pytest.approx(100 / 3) and res["parse_rate"] == pytest.approx(200 / 3)
