"""LLM rewriter and diffusion editor with tiny random models built from configs (offline): wiring, prompts,
batching, validation, caching, fill-ahead and the zero-calls-on-the-second-epoch guarantee."""

import random

import pytest
from PIL import Image

from datamodules.negatives.editors.diffusion import DiffusersEditor
from datamodules.negatives.image_edit import ImageEdit
from datamodules.negatives.llm_rewriter import LLMRewriter, validate
from datamodules.negatives.text_rules import TextRules
from datamodules.records import Record


def records(n=6):
    caps = [
        "a red circle to the left of a blue square",
        "two dogs are playing with a red frisbee",
        "a man riding a horse on the beach",
        "a small green star above a large yellow circle",
    ]
    return [
        Record(id=f"r{i}", image=None, caption=caps[i % len(caps)] + ("" if i < len(caps) else f" {i}"))
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "orig, out, kind, ok",
    [
        ("a red car", "a blue car", "color", True),
        ("a red car", "a red car", "color", False),
        ("a red car", "a red truck", "color", False),
        ("two dogs", "three dogs", "quantity", True),
        ("a cat left of a dog", "a cat right of a dog", "position", True),
        ("a man sitting", "a man standing", "verb", True),
        ("a man with a hat", "a man without a hat", "negation", True),
        ("a man with a hat", "a woman with a hat", "negation", False),
        ("a red cat and a blue dog", "a blue cat and a red dog", "swap_attributes", True),
        ("a cat on a mat", "New caption: a mat on a cat", "swap_objects", True),
        ("a cat", "a cat " + "very " * 10, "color", False),
        ("a cat", "", "color", False),
    ],
)
def test_llm_output_validation(orig, out, kind, ok):
    neg, reason = validate(orig, out, kind)
    assert (neg is not None) == ok, reason


def test_llm_rewriter_online_caches_and_second_epoch_makes_no_calls(tiny_llm_dir, tmp_path):
    gen = LLMRewriter(
        str(tiny_llm_dir),
        kinds=["color", "negation"],
        cache_dir=str(tmp_path),
        fill="online",
        max_new_tokens=6,
    )
    recs = records()
    first = [gen(r, None, random.Random(r.id)) for r in recs]
    s1 = gen.pop_stats()
    assert s1["llm_rewriter/calls"] == len(recs) and s1["llm_rewriter/cache_miss"] == len(recs)
    second = [gen(r, None, random.Random(r.id)) for r in recs]
    s2 = gen.pop_stats()
    assert "llm_rewriter/calls" not in s2 and s2["llm_rewriter/cache_hit"] == len(recs)
    assert [[n.payload for n in x] for x in first] == [[n.payload for n in x] for x in second]
    # A random tiny model writes nonsense: outputs are rejected by validation and masked, never passed through.
    assert s2.get("llm_rewriter/masked", 0) + sum(len(x) for x in second) == len(recs)
    for negs in second:
        for n in negs:
            assert n.kind in ("compositional/color", "compositional/negation")


def test_llm_rewriter_fill_ahead_batches_and_splits_across_ranks(tiny_llm_dir, tmp_path):
    recs = records(10)
    gens = [
        LLMRewriter(str(tiny_llm_dir), cache_dir=str(tmp_path), fill="ahead", batch_size=4, max_new_tokens=4)
        for _ in range(2)
    ]
    made = [g.fill(recs, seed=0, rank=r, world_size=2)["generated"] for r, g in enumerate(gens)]
    assert sum(made) == 10 and all(m > 0 for m in made)
    assert gens[0].stats["calls"] == -(-made[0] // 4)  # batched: ceil(n / batch_size) generate calls
    # Training reads exactly what was filled: no misses, no calls.
    g = LLMRewriter(str(tiny_llm_dir), cache_dir=str(tmp_path), fill="ahead", batch_size=4, max_new_tokens=4)
    for r in recs:
        g(r, None, random.Random(f"0-{g.name}-{r.id}"))
    st = g.pop_stats()
    assert (
        st["llm_rewriter/cache_hit"] == 10
        and "llm_rewriter/calls" not in st
        and "llm_rewriter/cache_miss" not in st
    )


def test_llm_prompt_template_per_kind(tiny_llm_dir, tmp_path):
    gen = LLMRewriter(
        str(tiny_llm_dir),
        kinds=["color"],
        cache_dir=str(tmp_path),
        templates={"color": "Recolour: {caption} ({instruction}) ->"},
    )
    assert gen.prompt("a red car", "color") == "Recolour: a red car (Change exactly one colour word) ->"
    with pytest.raises(ValueError, match="unknown"):
        LLMRewriter(str(tiny_llm_dir), kinds=["colour"], cache_dir=str(tmp_path))


def test_diffusion_image_edit_cached_fill_ahead(tiny_pix2pix_dir, tmp_path):
    editor = DiffusersEditor(
        pipeline="StableDiffusionInstructPix2PixPipeline",
        model=str(tiny_pix2pix_dir),
        steps=2,
        size=32,
        device="cpu",
    )
    gen = ImageEdit(TextRules(kinds=["color"]), editor, cache_dir=str(tmp_path))
    assert gen.fill_policy == "ahead"  # default for an expensive editor
    recs = [
        Record(id=f"i{i}", image=str(tmp_path / f"{i}.png"), caption=f"a {c} circle")
        for i, c in enumerate(["red", "blue", "green"])
    ]
    for i, r in enumerate(recs):
        Image.new("RGB", (48, 48), ["red", "blue", "green"][i]).save(r.image)
    assert gen.fill(recs, seed=0)["generated"] == 3
    for epoch in range(2):
        for r in recs:
            negs = gen(r, Image.open(r.image).convert("RGB"), random.Random(f"0-{gen.name}-{r.id}"))
            (t,) = [n for n in negs if n.modality == "text"]
            (im,) = [n for n in negs if n.modality == "image"]
            assert im.pair == 0 and im.kind == t.kind == "compositional/color" and im.payload.size == (48, 48)
        st = gen.pop_stats()
        assert st["image_edit/cache_hit"] == 3 and "image_edit/calls" not in st, (epoch, st)


def test_diffusion_editor_rejects_unknown_pipeline():
    with pytest.raises(ValueError, match="no pipeline class 'NopePipeline'"):
        DiffusersEditor(pipeline="NopePipeline", model="x")
    with pytest.raises(ValueError, match="cache_dir is required"):
        ImageEdit(TextRules(), DiffusersEditor(model="x"))


def test_img2img_pipeline_through_the_same_editor(tmp_path):
    """Any diffusers editing class by name: a tiny StableDiffusionImg2ImgPipeline (UNet in_channels=4)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from tests.conftest import tiny_sd_components

    StableDiffusionImg2ImgPipeline(**tiny_sd_components(4)).save_pretrained(tmp_path / "p")
    editor = DiffusersEditor(
        pipeline="StableDiffusionImg2ImgPipeline",
        model=str(tmp_path / "p"),
        steps=2,
        size=32,
        strength=0.5,
        device="cpu",
    )
    src = Image.new("RGB", (48, 48), "red")
    a = editor.edit(src, None, "a red circle", "a blue circle", random.Random(0))
    b = editor.edit(src, None, "a red circle", "a blue circle", random.Random(1))
    assert a.size == (48, 48) and a.tobytes() == b.tobytes()  # seeded per edit, not by the caller's RNG


def test_llm_rewriter_counts_a_heldout_rewrite_as_heldout_not_ok(tmp_path):
    """A valid rewrite that names a held-out composition is dropped by the leak filter and counted as such."""
    from datamodules.negatives.llm_rewriter import LLMRewriter

    gen = LLMRewriter(model="org/lm", kinds=["color"], cache_dir=str(tmp_path), fill="skip", device="cpu")
    gen.bind(key="llm_rewriter", leak_filter=lambda text: "purple" in text)
    rec = Record(id="r", image=None, caption="a red cube")
    gen.cache.put_json(gen.key(rec.caption, "color"), "a purple cube")
    assert gen(rec, Image.new("RGB", (8, 8)), random.Random(0)) == []
    stats = gen.pop_stats()
    assert stats["llm_rewriter/rejected_heldout"] == 1 and "llm_rewriter/rejected_ok" not in stats
