"""SFT on look-again traces: example construction, label masking on the revision only, a real training step,
and the captioner as summariser in the look-again loop (tiny random Qwen2.5-VL, CPU)."""

import pytest
import torch

from datamodules.world import World
from lightning_modules.reflection import trace_sft as ts
from lightning_modules.reflection.captioner import build_tiny_captioner, load_captioner, synthetic_pairs


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    model, processor = load_captioner(build_tiny_captioner(tmp_path_factory.mktemp("cap"), seed=0))
    return model.eval(), processor


def test_trace_examples_and_look_turn_vocabulary(captioner):
    _, processor = captioner
    world = World(seed=0)
    _, caps, scenes = synthetic_pairs(world, "train", 30, image_size=56)
    wrong = [c.replace("red", "blue") if "red" in c else c.replace("blue", "red") for c in caps]
    ex = ts.trace_examples(wrong, scenes, world)
    assert ex and all(isinstance(qa, list) and qa for _, _, qa, _ in ex)
    assert any(before != rev for _, before, _, rev in ex)  # some rounds revise
    turn = ts.look_turn(ex[0][2])
    assert turn.startswith("look again ") and turn == turn.lower() and "." not in turn
    # the answers the revision depends on (colours, shapes, numbers, yes/no) are in the tiny vocabulary
    vocab = processor.tokenizer.get_vocab()
    turns = " ".join(ts.look_turn(qa) for _, _, qa, _ in ex)
    answers = {
        w for _, _, qa, _ in ex for x in qa for w in ts.look_turn([{"q": "", "a": x["a"]}]).split()[2:]
    }
    assert answers and answers <= set(vocab) | {"none"}
    assert "2" not in turns.split()
    assert ts.look_turn([{"q": "How many circles are there?", "a": "2"}]).endswith("are there ? two")


def test_labels_cover_only_the_revision(captioner):
    _, processor = captioner
    world = World(seed=0)
    images, caps, _ = synthetic_pairs(world, "train", 2, image_size=56)
    qa = [{"q": "Is there a red circle?", "a": "no"}, {"q": "What colour is the circle?", "a": "blue"}]
    prefixes = [ts.round_prefix(processor, caps[0], qa), ts.round_prefix(processor, caps[1], qa[:1])]
    enc = ts.sft_batch(processor, images, prefixes, ["a blue circle", "a red square and a green star"])
    tok = processor.tokenizer
    for i, target in enumerate(["a blue circle", "a red square and a green star"]):
        labelled = enc["labels"][i][enc["labels"][i] != -100]
        assert tok.decode(labelled).split() == target.split() + ["<|im_end|>"]


def test_one_training_step_and_captioner_as_summariser(captioner):
    model, processor = captioner
    world = World(seed=0)
    images, caps, scenes = synthetic_pairs(world, "train", 6, image_size=56)
    ex = ts.trace_examples(caps, scenes, world)
    before = [p.detach().clone() for p in model.parameters()]
    losses = ts.train(
        model, processor, images, ex, list(enumerate(caps)), steps=1, batch_size=4, pair_share=0.25
    )
    assert len(losses) == 1 and losses[0] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    out, traces = ts.look_again_with_captioner(
        model, processor, images, caps, scenes, world, error_rate=0.0, rounds=2
    )
    assert len(out) == len(caps) == len(traces)
    for c, t in zip(caps, traces):
        assert len(t) <= 2 and all(set(r) == {"round", "qa", "before", "revised"} for r in t)
        if t:
            assert t[0]["before"] == c


def test_reflect_stage_traces_are_sft_data(captioner, tmp_path):
    """The preprocessing `reflect` stage's reflect_sft file loads as trace rounds and trains a step."""
    from datamodules.preprocess.stages.reflect import ReflectStage
    from lightning_modules.reflection.look_again import SceneReflector
    from tests.datamodules.preprocess.test_preprocess import OracleGate, OraclePreprocessor, noisy

    world = World()
    recs = noisy(world, 80, mismatch_rate=0.4, lone_image_rate=0.0, lone_text_rate=0.0)
    pre = OraclePreprocessor(OracleGate(world), [ReflectStage(SceneReflector(world, 0.0))], batch_size=10_000)
    rep = pre.run(recs, tmp_path)["report"]
    path = tmp_path / "reflect_sft_train.jsonl"
    images, examples = ts.load_reflect_traces([path])
    n_sft = rep["stage_outputs"]["reflect"]["sft_examples"]
    assert len(images) == n_sft > 5 and len(examples) >= n_sft
    assert all(0 <= i < len(images) and qa and before and rev for i, before, qa, rev in examples)
    assert images[0].mode == "RGB" and images[0].size == (48, 48)
    model, processor = captioner
    losses = ts.train(
        model, processor, images, examples, [(0, examples[0][3])], steps=1, batch_size=4, pair_share=0.25
    )
    assert len(losses) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "messages": []}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not a reflect_sft record"):
        ts.load_reflect_traces([bad])


def test_diagnose_reports_round_kinds(captioner, monkeypatch):
    model, processor = captioner
    world = World(seed=0)
    # a random captioner writes nothing parseable (no rounds at all); give diagnose parseable captions, half wrong
    _, caps, _ = synthetic_pairs(world, "train", 8, offset=20000)
    wrong = [c.replace("red", "blue") if i % 2 else c for i, c in enumerate(caps)]
    monkeypatch.setattr(ts, "generate_captions", lambda m, p, images: wrong[: len(images)])
    d = ts.diagnose(model.eval(), processor, world, n=8)
    assert "confirm" in d and set(d) <= {"confirm", "edit", "fallback"}
    for v in d.values():
        assert v["rounds"] > 0 and 0 <= v["exact_revision"] <= 1 and 0 <= v["copied_caption"] <= 1
    # a confirming round's target is the caption: both shares count the same outputs
    assert d["confirm"]["exact_revision"] == d["confirm"]["copied_caption"]
