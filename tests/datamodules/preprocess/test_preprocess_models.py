"""Real backends on tiny random models built from configs (offline): a transformers Qwen2.5-VL captioner /
repairer and a diffusers text-to-image pipeline — wiring, prompt templating, batching, caching, config path."""

import pytest
from hydra.utils import instantiate
from PIL import Image

from datamodules.preprocess import vlm as vlm_mod
from datamodules.preprocess.pipeline import Preprocessor
from datamodules.preprocess.stages.base import Item, StageContext
from datamodules.preprocess.stages.caption import CaptionStage
from datamodules.preprocess.stages.repair import RepairStage
from datamodules.preprocess.stages.text_to_image import TextToImageStage
from datamodules.preprocess.t2i_diffusers import DiffusersT2I
from datamodules.preprocess.vlm import TransformersVLM
from datamodules.records import Record
from tests.conftest import vlm_suppress_ids

COLORS = ["red", "green", "blue", "yellow", "white"]


def images(n, size=(48, 48)):
    return [Image.new("RGB", (size[0] + 8 * i, size[1]), COLORS[i % len(COLORS)]) for i in range(n)]


@pytest.fixture
def vlm(tiny_vlm_dir):
    return TransformersVLM(
        str(tiny_vlm_dir),
        caption_prompt="describe this image",
        repair_prompt='the caption reads "{caption}" look again',
        max_new_tokens=6,
        suppress_tokens=vlm_suppress_ids(),
        device="cpu",
    )


def test_vlm_prompt_template_holds_image_and_current_caption(vlm):
    recs = [Record("a", None, "a red circle"), Record("b", None, None)]
    rep = vlm.prompts_for("repair", recs[:1])[0]
    cap = vlm.prompts_for("caption", recs[1:])[0]
    assert "<|image_pad|>" in rep and '"a red circle"' in rep and rep.rstrip().endswith("assistant")
    assert "describe this image" in cap and "<|image_pad|>" in cap
    with pytest.raises(ValueError, match="caption"):
        TransformersVLM("x", repair_prompt="no placeholder")


def test_vlm_batched_generation_is_deterministic_and_batch_independent(vlm):
    ims = images(3)
    recs = [Record(f"r{i}", None, None) for i in range(3)]
    out = vlm.caption(ims, recs, [0, 1, 2])
    assert len(out) == 3 and all(o is None or (isinstance(o, str) and o.strip()) for o in out)
    assert vlm.caption(ims, recs, [0, 1, 2]) == out  # greedy: deterministic
    # left padding: an item's caption does not depend on what it is batched with
    assert [vlm.caption([im], [r], [0])[0] for im, r in zip(ims, recs)] == out
    assert (
        len(
            vlm.repair(
                ims[:2], [Record("x", None, "a red square"), Record("y", None, "two blue stars")], [0, 1]
            )
        )
        == 2
    )


def test_vlm_answer_cleaning(vlm):
    assert vlm.clean('  "a red circle"\nsecond line') == "a red circle"
    assert vlm.clean("   \n ") is None
    assert vlm.clean(" ".join(["word"] * 61)) is None


def test_caption_and_repair_stages_with_vlm_batch_and_cache(vlm, tmp_path, monkeypatch):
    batches = []
    real = vlm._run

    def spy(task, ims, recs, seeds):
        batches.append((task, len(ims)))
        return real(task, ims, recs, seeds)

    monkeypatch.setattr(vlm, "_run", spy)
    items = [Item(Record(f"l{i}", "x", None, "lone_image"), im) for i, im in enumerate(images(5))]
    ctx = StageContext(str(tmp_path), batch_size=2)
    kept = CaptionStage(vlm)(items, ctx)
    assert batches == [("caption", 2), ("caption", 2), ("caption", 1)] and ctx.calls["caption"] == 5
    assert len(kept) + ctx.dropped["caption_failed"] == 5
    assert all(it.record.caption and it.record.provenance[-1]["stage"] == "caption" for it in kept)
    # Same inputs again: all from the cache.
    items2 = [Item(Record(f"l{i}", "x", None, "lone_image"), im) for i, im in enumerate(images(5))]
    ctx2 = StageContext(str(tmp_path), batch_size=2)
    kept2 = CaptionStage(vlm)(items2, ctx2)
    assert ctx2.calls["caption"] == 0 and [it.record.caption for it in kept2] == [
        it.record.caption for it in kept
    ]
    # Repair sees the current caption: a different current caption is a different cache key.
    pairs = [Item(Record("p", "x", "a red circle"), images(1)[0])]
    ctx3 = StageContext(str(tmp_path))
    ctx3.round = 1
    RepairStage(vlm)(pairs, ctx3)
    RepairStage(vlm)([Item(Record("p", "x", "a blue circle"), images(1)[0])], ctx3)
    assert ctx3.calls["repair"] == 2


def test_vlm_stages_from_config_share_one_model(cfg_factory, tiny_vlm_dir, tmp_path):
    vlm_mod._LOADED.clear()
    cfg = cfg_factory(
        "stages=[caption_vlm,repair_vlm]",
        f"preprocess.stages.caption.backend.model={tiny_vlm_dir}",
        f"preprocess.stages.repair.backend.model={tiny_vlm_dir}",
        "preprocess.stages.caption.backend.max_new_tokens=4",
        "preprocess.stages.repair.backend.max_new_tokens=4",
        f"preprocess.stages.caption.backend.suppress_tokens={vlm_suppress_ids()}",
        config_name="preprocess",
    )
    from datamodules.preprocess.run import build_stages

    stages = build_stages(cfg.preprocess)
    assert [s.name for s in stages] == ["caption", "repair"]
    recs = [Record("a", None, None, "lone_image"), Record("b", "x", "a red square")]
    items = [Item(r, im) for r, im in zip(recs, images(2))]
    ctx = StageContext(str(tmp_path))
    stages[0](items, ctx)
    ctx.round = 1
    stages[1](items[1:], ctx)
    assert len(vlm_mod._LOADED) == 1 and ctx.calls["caption"] == 1 and ctx.calls["repair"] == 1


def test_preprocessor_with_vlm_stages_accounts_for_everything(vlm, tmp_path):
    recs = [Record(f"l{i}", None, None, "lone_image") for i in range(3)] + [Record("p", None, "a red circle")]
    # images attached through bytes, as a webdataset shard would give them
    import io

    for r, im in zip(recs, images(4)):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        r.image = buf.getvalue()
    out = Preprocessor(None, [CaptionStage(vlm)], cache_dir=str(tmp_path / "c")).run(recs, tmp_path / "o")
    rep = out["report"]
    assert rep["accounted"] == 4 and rep["model_calls"]["caption"] == 3
    assert rep["counts"].get("captioned", 0) + rep["dropped"].get("caption_failed", 0) == 3


def test_diffusers_text_to_image_stage(tiny_sd_dir, tmp_path):
    t2i = DiffusersT2I("StableDiffusionPipeline", str(tiny_sd_dir), steps=2, size=32, device="cpu")
    made = t2i.generate(["a red circle", "two blue squares"], [0, 1])
    assert [m.size for m in made] == [(32, 32), (32, 32)]
    assert t2i.generate(["a red circle"], [0])[0].tobytes() == made[0].tobytes()  # per-item seeds
    items = [
        Item(Record(f"t{i}", None, c, "lone_text"), None)
        for i, c in enumerate(["a red circle", "a blue star", "a dog"])
    ]
    ctx = StageContext(str(tmp_path), batch_size=2)
    out = TextToImageStage(t2i)(items, ctx)
    assert len(out) == 3 and all(it.image.size == (32, 32) for it in out) and ctx.calls["text_to_image"] == 3
    assert all(it.record.meta["produced"] == "generated" for it in out)
    items2 = [
        Item(Record(f"t{i}", None, c, "lone_text"), None)
        for i, c in enumerate(["a red circle", "a blue star", "a dog"])
    ]
    ctx2 = StageContext(str(tmp_path), batch_size=2)
    out2 = TextToImageStage(t2i)(items2, ctx2)
    assert ctx2.calls["text_to_image"] == 0 and [i.image.tobytes() for i in out2] == [
        i.image.tobytes() for i in out
    ]
    with pytest.raises(ValueError, match="no pipeline class"):
        DiffusersT2I("NoSuchPipeline", "x")


def test_text_to_image_diffusers_config(cfg_factory, tiny_sd_dir):
    cfg = cfg_factory(
        "stages=[text_to_image_diffusers]",
        f"preprocess.stages.text_to_image.backend.model={tiny_sd_dir}",
        "preprocess.stages.text_to_image.backend.size=32",
        "preprocess.stages.text_to_image.backend.steps=1",
        config_name="preprocess",
    )
    stage = instantiate(cfg.preprocess.stages.text_to_image)
    assert isinstance(stage.backend, DiffusersT2I) and stage.backend.generate(["a cat"], [3])[0].size == (
        32,
        32,
    )
