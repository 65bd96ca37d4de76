"""The `reflect` stage (look again): symbolic backend through the pipeline, trace files, the attention trigger,
the VLM backend's requester/responder/summariser loop on a tiny random Qwen2.5-VL, and the config path."""

import json

import pytest
import torch

from datamodules.preprocess.pipeline import Preprocessor
from datamodules.preprocess.quality import quality
from datamodules.preprocess.stages.base import Item, StageContext
from datamodules.preprocess.stages.caption import CaptionStage
from datamodules.preprocess.stages.reflect import ReflectStage
from datamodules.preprocess.stages.text_to_image import TextToImageStage
from datamodules.preprocess.symbolic import RendererT2I, SceneCaptioner
from datamodules.records import Record
from datamodules.world import World
from lightning_modules.reflection.look_again import SceneReflector
from tests.datamodules.preprocess.test_preprocess import OracleGate, OraclePreprocessor, noisy


def reflect_stages(world, error_rate=0.0, responder_error=0.0):
    return [
        CaptionStage(SceneCaptioner(world, error_rate)),
        TextToImageStage(RendererT2I(world)),
        ReflectStage(SceneReflector(world, responder_error, rounds=2), prompt="describe the image"),
    ]


def test_reflect_stage_repairs_through_the_pipeline_and_writes_traces(tmp_path):
    world = World()
    recs = noisy(world, 300, mismatch_rate=0.3)
    pre = OraclePreprocessor(
        OracleGate(world), reflect_stages(world), batch_size=10_000, cache_dir=str(tmp_path / "c")
    )
    out = pre.run(recs, tmp_path / "o")
    rep = out["report"]
    q = quality(recs, out["kept"], world)
    # A perfect responder: every revision the gate accepts is true, and the manifest holds only true pairs.
    assert q["repaired_count"] > 30 and q["repaired_true"] == 1.0
    assert q["clean_manifest_true_pair_rate"] == 1.0
    assert rep["accounted"] == rep["counts"]["input"]
    so = rep["stage_outputs"]["reflect"]
    lines = [json.loads(x) for x in (tmp_path / "o" / "reflect_train.jsonl").read_text().splitlines()]
    sft = [json.loads(x) for x in (tmp_path / "o" / "reflect_sft_train.jsonl").read_text().splitlines()]
    assert so["reflected"] == len(lines) > 30 and so["sft_examples"] == len(sft) > 0
    manifest = {
        json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "o" / "train.jsonl").read_text().splitlines()
    }
    for line in lines:
        assert line["kept"] == (line["id"] in manifest)
        first = line["rounds"][0]
        assert first["trace"] and all(
            t["qa"] and "q" in t["qa"][0] and "a" in t["qa"][0] for t in first["trace"]
        )
    ex = sft[0]
    row = manifest[ex["id"]]
    msgs = ex["messages"]
    # chat format: the image and prompt, the initial caption, then "Look again" turns, the last one the final caption
    assert msgs[0]["content"][0] == {"type": "image", "image": row["image"]}
    assert msgs[0]["content"][1]["text"] == "describe the image"
    assert msgs[2]["content"].startswith("Look again. ") and msgs[-1]["role"] == "assistant"
    assert msgs[-1]["content"] == ex["final"] == row["caption"]
    prov = [p for p in row["provenance"] if p["stage"] == "reflect"]
    assert prov and prov[0]["trace"] and prov[0]["before"] == msgs[1]["content"]
    # Re-run: every look-again comes from the cache.
    recs2 = noisy(world, 300, mismatch_rate=0.3)
    pre2 = OraclePreprocessor(
        OracleGate(world), reflect_stages(world), batch_size=10_000, cache_dir=str(tmp_path / "c")
    )
    rep2 = pre2.run(recs2, tmp_path / "o2")["report"]
    assert rep2["model_calls"].get("reflect", 0) == 0 and rep2["output"] == rep["output"]


def test_scene_reflector_needs_scene_images_and_drops_unparsable_captions():
    world = World()
    r = SceneReflector(world)
    with pytest.raises(ValueError, match="SceneImage"):
        r.reflect([None], [Record("x", "path.png", "a red circle")], [0])
    rec = noisy(world, 20, mismatch_rate=0.0, lone_image_rate=0.0, lone_text_rate=0.0)[0]
    rec.caption = "a photo of something outside the grammar"
    ctx = StageContext(None)
    stage = ReflectStage(r)
    assert stage([Item(rec, rec.image.load())], ctx) == [] and ctx.dropped["reflect_failed"] == 1


class ConstantAttention:
    """An attention meter stand-in: the share is looked up by caption."""

    def __init__(self, low: set[str]):
        self.low = low

    def score(self, images, captions):
        return torch.tensor([0.05 if c in self.low else 0.5 for c in captions])


def test_attention_below_threshold_sends_a_gate_passing_pair_to_reflect(tmp_path):
    world = World()
    recs = noisy(world, 60, mismatch_rate=0.0, lone_image_rate=0.0, lone_text_rate=0.0)
    flagged = {recs[0].caption, recs[1].caption}
    pre = OraclePreprocessor(
        OracleGate(world),
        reflect_stages(world)[2:],
        batch_size=10_000,
        repair_rounds=1,
        attention=ConstantAttention(flagged),
        attention_threshold=0.2,
    )
    out = pre.run(recs, tmp_path)
    rep = out["report"]
    n_flag = sum(r.caption in flagged for r in recs)
    assert rep["attention_flagged"] == n_flag >= 2
    assert rep["stage_outputs"]["reflect"]["reflected"] == n_flag
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert all("visual_share" in r["gate_scores"] for r in rows)
    # True captions that drew little attention: the reflector confirms them, and the attention check fails again
    # (the caption is unchanged), so they are dropped after the last round.
    assert rep["dropped"].get("gate_failed_after_repair", 0) == n_flag
    with pytest.raises(ValueError, match="attention_threshold"):
        Preprocessor(None, attention=ConstantAttention(set()))


@pytest.fixture
def vlm(tiny_vlm_dir):
    from datamodules.preprocess.vlm import TransformersVLM
    from tests.conftest import vlm_suppress_ids

    return TransformersVLM(
        str(tiny_vlm_dir),
        max_new_tokens=5,
        suppress_tokens=vlm_suppress_ids(),
        device="cpu",
        reflect_rounds=2,
    )


def test_vlm_reflect_runs_requester_responder_summariser(vlm, monkeypatch):
    from PIL import Image

    calls = []
    real = vlm.generate

    def spy(chats, images, seeds):
        calls.append((images is not None, len(chats), chats[0][-1]["content"][-1]["text"]))
        return real(chats, images, seeds)

    monkeypatch.setattr(vlm, "generate", spy)
    ims = [Image.new("RGB", (56, 56), c) for c in ("red", "blue")]
    recs = [Record("a", None, "a red circle"), Record("b", None, "two blue stars")]
    out = vlm.reflect(ims, recs, [0, 1])
    assert len(out) == 2
    # round 1: questions without the image, answers with it (one per question), summaries with it
    assert calls[0][0] is False and calls[0][1] == 2 and '"a red circle"' in calls[0][2]
    assert calls[1][0] is True and calls[1][1] >= 2 and calls[1][2].endswith("Answer in a few words.")
    assert calls[2][0] is True and calls[2][1] == 2 and "Looking again at the image" in calls[2][2]
    for o, r in zip(out, recs):
        if o is None:
            continue
        assert o["initial"] == r.caption and 1 <= len(o["trace"]) <= 2
        t = o["trace"][0]
        assert t["before"] == r.caption and t["qa"] and {"q", "a"} <= set(t["qa"][0])
    assert vlm.reflect(ims, recs, [0, 1]) == out  # greedy: deterministic
    assert vlm.questions("1. Is it red\n- How many stars?\n\n") == ["Is it red?", "How many stars?"]


def test_attention_scorer_on_tiny_vlm(tiny_vlm_dir):
    from PIL import Image

    from datamodules.preprocess.vlm import AttentionScorer

    s = AttentionScorer(str(tiny_vlm_dir), prompt="describe this image", device="cpu")
    v = s.score(
        [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (64, 56), "blue")], ["a red circle", "two"]
    )
    assert v.shape == (2,) and bool(((v >= 0) & (v <= 1)).all()) and v[0] != v[1]


def test_reflect_config_path(cfg_factory):
    from hydra.utils import instantiate

    from datamodules.preprocess.run import build_stages

    cfg = cfg_factory("stages=[caption,reflect,text_to_image]", config_name="preprocess")
    stages = build_stages(cfg.preprocess)
    assert [s.name for s in stages] == ["caption", "reflect", "text_to_image"]
    assert stages[1].phase == "repair" and isinstance(stages[1].backend, SceneReflector)
    cfg2 = cfg_factory("stages=[caption_vlm,reflect_vlm]", config_name="preprocess")
    back = instantiate(cfg2.preprocess.stages.reflect.backend)
    assert back.reflect_rounds == 2 and back.max_questions == 3


def test_produce_phase_reflects_only_the_captions_written_in_this_run(tmp_path):
    from datamodules.preprocess.quality import true_pair

    world = World()

    def run(stages, out):
        recs = noisy(world, 200, mismatch_rate=0.0, lone_image_rate=0.5, lone_text_rate=0.0)
        res = Preprocessor(None, stages).run(recs, out)
        captioned = [r for r in res["kept"] if r.meta.get("produced") == "captioned"]
        return res, captioned, sum(true_pair(r, world) for r in captioned) / len(captioned)

    plain, cap_plain, truth_plain = run([CaptionStage(SceneCaptioner(world, 0.6))], tmp_path / "a")
    stage = ReflectStage(SceneReflector(world, 0.0), phase="produce", name="reflect_captions")
    refl, cap_refl, truth_refl = run([CaptionStage(SceneCaptioner(world, 0.6)), stage], tmp_path / "b")
    assert len(cap_refl) == len(cap_plain) > 60
    assert truth_refl > truth_plain + 0.2
    # the given pairs were not touched; only the captioned ones carry a reflect trace
    for r in refl["kept"]:
        stages = [p["stage"] for p in r.provenance]
        assert ("reflect_captions" in stages) == (r.meta.get("produced") == "captioned")
    assert refl["report"]["stage_outputs"]["reflect_captions"]["reflected"] == len(cap_refl)
    with pytest.raises(ValueError, match="phase"):
        ReflectStage(stage.backend, phase="later")


def test_attention_meter_from_config(cfg_factory):
    from datamodules.preprocess.run import build

    cfg = cfg_factory(
        "gate=none",
        "preprocess.attention={_target_:tests.datamodules.preprocess.test_reflect.ConstantAttention,low:[]}",
        "preprocess.attention_threshold=0.2",
        config_name="preprocess",
    )
    _, _, pre = build(cfg.preprocess)
    assert isinstance(pre.attention, ConstantAttention) and pre.attention_threshold == 0.2
    cfg2 = cfg_factory("gate=none", "preprocess.attention_threshold=0.2", config_name="preprocess")
    with pytest.raises(ValueError, match="go together"):
        build(cfg2.preprocess)
