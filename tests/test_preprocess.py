"""Preprocessing with symbolic backends and a calibrated gate of tiny ViT + ResNet scorers; broken-file fixture."""

import json
import random

import pytest
from PIL import Image

from datamodules.gate import Gate, GateScorer
from datamodules.preprocess.pipeline import Preprocessor
from datamodules.preprocess.symbolic import RendererT2I, SceneCaptioner
from datamodules.records import Record
from datamodules.sources.noisy_synthetic import NoisySyntheticSource
from datamodules.world import World
from datamodules.world.claims import holds, parse_claim
from lightning_modules.model_factory import ModelSpec


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    g = Gate(
        [GateScorer("vit", ModelSpec("tiny-vit"), "vit"), GateScorer("cnn", ModelSpec("tiny-rn"), "cnn")],
        combine="mean",
        threshold=0.0,
    )
    src = NoisySyntheticSource(
        World(), num_train=64, num_val=0, num_test=0, mismatch_rate=0, lone_image_rate=0, lone_text_rate=0
    )
    recs = src.records("train")
    res = g.calibrate(
        [r.image.load() for r in recs], [r.caption for r in recs], tmp_path_factory.mktemp("cal")
    )
    assert 0.0 <= res["far_at_threshold"] <= 0.1
    return g


def test_gate_needs_vit_and_cnn():
    with pytest.raises(ValueError, match="at least one 'vit' and one 'cnn'"):
        Gate([GateScorer("a", ModelSpec("tiny-vit"), "vit"), GateScorer("b", ModelSpec("tiny-vit"), "vit")])
    with pytest.raises(ValueError, match="tower=cnn but tiny-vit has a ViT image tower"):
        Gate([GateScorer("a", ModelSpec("tiny-vit"), "vit"), GateScorer("b", ModelSpec("tiny-vit"), "cnn")])


def test_calibration_outputs(gate, tmp_path):
    src = NoisySyntheticSource(
        World(), num_train=32, num_val=0, num_test=0, mismatch_rate=0, lone_image_rate=0, lone_text_rate=0
    )
    recs = src.records("train")
    res = gate.calibrate([r.image.load() for r in recs], [r.caption for r in recs], tmp_path, target_far=0.1)
    assert (tmp_path / "gate_histogram.png").is_file() and (tmp_path / "gate_stats.json").is_file()
    assert set(res["stats"]) == {"vit", "cnn"} and res["num_pairs"] == 32


def test_noisy_source_rates_and_ground_truth():
    src = NoisySyntheticSource(
        World(),
        num_train=2000,
        num_val=0,
        num_test=10,
        mismatch_rate=0.1,
        lone_image_rate=0.05,
        lone_text_rate=0.05,
    )
    recs = src.records("train")
    noise = [r.meta["noise"] for r in recs]
    assert 150 < noise.count("mismatched") < 250 and 60 < noise.count("lone_image") < 140
    for r in recs:
        if r.meta["noise"] == "mismatched":
            assert r.caption != r.meta["true_caption"]
        if r.source == "lone_text":
            assert r.image is None and r.caption
    assert all(r.meta.get("noise", "clean") == "clean" for r in src.records("test"))


def test_symbolic_backends():
    world = World()
    src = NoisySyntheticSource(world, num_train=50, num_val=0, num_test=0)
    exact = SceneCaptioner(world, error_rate=0.0)
    for r in src.records("train"):
        if r.image is None:
            continue
        cap = exact.caption(r.image.load(), r, random.Random(0))
        assert holds(parse_claim(cap), r.image.scene, world.relation_margin)
    t2i = RendererT2I(world)
    made = [t2i.generate(r.meta["true_caption"], random.Random(0)) for r in src.records("train")[:20]]
    assert all(m is None or m.load().size == (48, 48) for m in made)
    assert sum(m is not None for m in made) >= 15


def test_pipeline_accounts_for_every_record_and_caches(gate, tmp_path):
    world = World()

    def fresh():  # the pipeline mutates records, so each run gets newly made ones
        src = NoisySyntheticSource(
            world,
            num_train=120,
            num_val=0,
            num_test=0,
            mismatch_rate=0.2,
            lone_image_rate=0.1,
            lone_text_rate=0.1,
        )
        pre = Preprocessor(
            gate, captioner=SceneCaptioner(world, 0.1), t2i=RendererT2I(world), cache_dir=str(tmp_path / "c")
        )
        return src, pre

    src, pre = fresh()
    out = pre.run(src.records("train"), tmp_path / "out")
    rep = out["report"]
    assert rep["accounted"] == 120 and rep["counts"]["input"] == 120
    assert rep["counts"].get("captioned", 0) > 0 and rep["counts"].get("generated", 0) > 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "clean.jsonl").read_text().splitlines()]
    assert len(lines) == rep["output"] and all((tmp_path / "out" / x["image"]).is_file() for x in lines)
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "gate_scores.png").is_file()
    # Re-running the same config makes no model calls.
    src2, pre2 = fresh()
    out2 = pre2.run(src2.records("train"), tmp_path / "out2")
    assert (
        pre.calls["caption"] + pre.calls["repair"] > 0 and pre2.calls["caption"] + pre2.calls["repair"] == 0
    )
    assert out2["report"]["counts"] == rep["counts"]


def test_broken_inputs_are_skipped_and_counted(gate, tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (48, 48), "red").save(good)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (2, 2), "red").save(tmp_path / "tiny.png")
    recs = [
        Record("ok", str(good), "a red square"),
        Record("dup", str(good), "a red square"),
        Record("dup", str(good), "again"),
        Record("missing", str(tmp_path / "nope.png"), "a blue circle"),
        Record("corrupt", str(tmp_path / "corrupt.jpg"), "a thing"),
        Record("tiny", str(tmp_path / "tiny.png"), "a dot"),
        Record("empty", None, "   "),
        Record("bytes_bad", b"\x00\x01garbage", "x"),
    ]
    pre = Preprocessor(gate, captioner=None, t2i=None, max_pixels=10_000_000)
    out = pre.run(recs, tmp_path / "out")
    d = out["report"]["dropped"]
    assert d["duplicate_id"] == 1 and d["image_missing"] == 1 and d["image_unreadable"] == 2
    assert d["image_too_small"] == 1 and d["empty_caption_and_no_image"] == 1
    assert out["report"]["accounted"] == len(recs)


def test_preprocess_entry_point_with_random_scorers(tmp_path):
    from datamodules.preprocess.__main__ import run_preprocess
    from tests.conftest import make_cfg

    cfg = make_cfg(
        tmp_path,
        [
            f"out_dir={tmp_path / 'clean'}",
            "raw.num_train=80",
            "raw.num_val=40",
            "raw.num_test=0",
            "gate.calibration_size=40",
            "~gate.ensemble.scorers.0.model.pretrained",
            "~gate.ensemble.scorers.1.model.pretrained",
            f"preprocessor.cache_dir={tmp_path / 'cache'}",
        ],
        config_name="preprocess",
    )
    import torch

    torch.manual_seed(0)  # random-init scorers must be the same models in both runs
    report = run_preprocess(cfg)
    assert report["accounted"] == 80
    assert (tmp_path / "clean" / "calibration" / "gate_histogram.png").is_file()
    assert (tmp_path / "clean" / "clean.jsonl").is_file()
    # Second run re-uses the calibration and the caches.
    torch.manual_seed(0)
    again = run_preprocess(cfg)
    assert again["counts"] == report["counts"] and not again["model_calls"].get("caption")
