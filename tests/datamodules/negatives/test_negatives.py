"""Generator contracts: never the positive, deterministic per seed, kinds labelled, real COCO-style captions."""

import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from datamodules.negatives.base import NegativeGenerator
from datamodules.negatives.editors.renderer import RendererEditor
from datamodules.negatives.image_edit import ImageEdit
from datamodules.negatives.patch_shuffle import PatchShuffle, patch_shuffle
from datamodules.negatives.text_rules import KINDS, TextRules, rule_negatives
from datamodules.negatives.trigram_shuffle import TrigramShuffle
from datamodules.records import Negative, Record
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World
from datamodules.world.claims import Relation, holds, parse_claim

COCO = [
    line
    for line in (Path(__file__).parent / "fixtures" / "coco_captions.txt").read_text().splitlines()
    if line
]


def rec(caption: str) -> Record:
    return Record(id=caption[:20], image="x.png", caption=caption)


def img() -> Image.Image:
    im = Image.new("RGB", (48, 48))
    im.putdata([(x * 5 % 256, y * 5 % 256, (x * y) % 256) for y in range(48) for x in range(48)])
    return im


@pytest.mark.parametrize(
    "gen", [TrigramShuffle(), TextRules(num_per_caption=3), TextRules(kinds=["swap_objects"])]
)
def test_text_generators_never_return_positive_and_are_deterministic(gen):
    made = 0
    for cap in COCO:
        a = gen(rec(cap), img(), random.Random(1))
        b = gen(rec(cap), img(), random.Random(1))
        assert [n.payload for n in a] == [n.payload for n in b]
        for n in a:
            made += 1
            assert n.modality == "text" and n.generator == gen.name and n.version
            assert " ".join(n.payload.lower().split()) != " ".join(cap.lower().split())
            assert n.kind.split("/")[0] in ("structure", "compositional")
    assert made >= len(COCO) // 3


def test_text_rules_cover_the_paper_kinds_on_real_captions():
    fired = Counter()
    for cap in COCO:
        for kind in KINDS:
            if rule_negatives(cap, kind):
                fired[kind] += 1
    for kind in (
        "color",
        "quantity",
        "position",
        "verb",
        "negation",
        "swap_attributes",
        "swap_objects",
        "object",
    ):
        assert fired[kind] >= 3, (kind, fired)


@pytest.mark.parametrize(
    "caption, kind, expected",
    [
        ("A man riding a horse on the beach.", "swap_objects", "A horse riding a man on the beach."),
        (
            "a small red circle to the left of a large blue square",
            "position",
            "a small red circle to the right of a large blue square",
        ),
        (
            "a small red circle to the left of a large blue square",
            "swap_attributes",
            "a small blue circle to the left of a large red square",
        ),
        ("Two dogs are playing in the grass", "negation", "Two dogs are not playing in the grass"),
        ("a yellow square and no cyan triangle", "negation", "a yellow square and a cyan triangle"),
        ("a man sitting on a bench", "verb", "a man standing on a bench"),
        ("two purple circles", "quantity", "three purple circles"),
        ("a red apple", "quantity", "two red apples"),
    ],
)
def test_text_rule_examples(caption, kind, expected):
    assert expected in rule_negatives(caption, kind)


def test_rules_skip_swaps_that_keep_the_meaning():
    assert rule_negatives("a cat and a dog", "swap_objects") == []
    assert rule_negatives("a man and a woman", "swap_objects") == []
    assert "A person riding a horse" not in rule_negatives(
        "A man riding a horse", "object"
    )  # hypernym = true


def test_swaps_inside_a_list_are_not_negatives():
    # Reordering the items of a list keeps its meaning: "A, B and C" == "C, B and A".
    assert rule_negatives("a red cube, a blue ball and a green star", "swap_objects") == []
    assert rule_negatives(
        "a large green star, a small green star and a large orange cross", "swap_attributes"
    ) == [
        "a large orange star, a small green star and a large green cross",
        "a large green star, a small orange star and a large green cross",
        "a large green star, a large green star and a small orange cross",
    ]
    assert rule_negatives("a red cube to the left of a blue ball", "swap_objects") == [
        "a blue ball to the left of a red cube"
    ]


def test_structural_rule_negatives_are_false_in_their_scene():
    """Judged by the world's own semantics: a swap or relation rewrite of a synthetic caption must not hold in the
    caption's scene (rules that need no scene knowledge must not emit false negatives)."""
    world = World(seed=3)
    src = SyntheticWorldSource(world, num_train=400)
    gen = TextRules(kinds=["position", "swap_attributes", "swap_objects"], num_per_caption=3)
    gen.vocabulary, gen.leak_filter = src.vocabulary, src.leaks
    seen, true = Counter(), []
    for rec in src.records("train"):
        for neg in gen(rec, None, random.Random(rec.id)):
            seen[neg.kind] += 1
            claim = parse_claim(neg.payload)
            assert claim is not None, neg.payload
            if holds(claim, rec.image.scene, world.relation_margin):
                true.append((rec.caption, neg.payload))
    assert min(seen.values()) > 50, seen
    assert true == []


def test_inapplicable_kind_is_masked_not_copied():
    gen = TextRules(kinds=["color"])
    assert gen(rec("A man riding a horse"), img(), random.Random(0)) == []
    assert gen.pop_stats() == {"text_rules/masked": 1}


def test_trigram_shuffle_always_differs():
    gen = TrigramShuffle()
    for seed in range(50):
        (n,) = gen(rec("a small red circle to the left of a large blue square"), img(), random.Random(seed))
        assert sorted(n.payload.split()) == sorted(
            "a small red circle to the left of a large blue square".split()
        )
        assert n.payload != "a small red circle to the left of a large blue square"
    assert gen(rec("two dogs"), img(), random.Random(0)) == []  # one trigram: nothing to shuffle


@pytest.mark.parametrize("grid", [2, 3, 4])
def test_patch_shuffle_is_a_non_identity_permutation(grid):
    im = img()
    for seed in range(20):
        out, perm = patch_shuffle(im, grid, random.Random(seed))
        assert perm != list(range(grid * grid)) and sorted(perm) == list(range(grid * grid))
        assert out.size == im.size and out.tobytes() != im.tobytes()
        assert sorted(out.getdata()) == sorted(im.getdata())  # same pixels, moved
    negs = PatchShuffle(grid=grid)(rec("x"), im, random.Random(0))
    assert len(negs) == 1 and negs[0].kind == "structure/patch_shuffle" and negs[0].modality == "image"


def test_patch_shuffle_masks_uniform_images():
    gen = PatchShuffle(grid=2)
    assert gen(rec("x"), Image.new("RGB", (48, 48), "red"), random.Random(0)) == []
    assert gen.pop_stats() == {"patch_shuffle/masked": 1}


def test_bad_generator_config_fails_fast():
    with pytest.raises(ValueError, match="unknown"):
        TextRules(kinds=["colour"])
    with pytest.raises(ValueError, match="grid >= 2"):
        PatchShuffle(grid=1)


def test_synthetic_vocabulary_and_heldout_filter():
    world = World()
    src = SyntheticWorldSource(world, num_train=300, num_val=0, num_test=0)
    gen = TextRules(num_per_caption=3)
    gen.vocabulary, gen.leak_filter = src.vocabulary, src.leaks
    for r in src.records("train"):
        for n in gen(r, r.image.load(), random.Random(0)):
            assert not src.leaks(n.payload), n.payload
            for w in ("pink", "black", "boy", "cube"):
                assert w not in n.payload.split()


def test_renderer_image_edits_match_their_negative_caption():
    world = World()
    src = SyntheticWorldSource(world, num_train=200, num_val=0, num_test=0)
    gen = ImageEdit(
        TextRules(kinds=["color", "size", "position", "swap_attributes", "swap_objects"]),
        RendererEditor(world),
    )
    gen.vocabulary, gen.leak_filter = src.vocabulary, src.leaks
    pairs = 0
    for r in src.records("train"):
        negs = gen(r, r.image.load(), random.Random(0))
        texts = [n for n in negs if n.modality == "text"]
        for n in (n for n in negs if n.modality == "image"):
            pairs += 1
            t = texts[n.pair]
            assert n.kind == t.kind and n.payload.size == (48, 48)
    assert pairs > 60
    # The edited scene makes the negative true and the positive false (checked on the scene, not pixels).
    from datamodules.negatives.editors.renderer import edit_scene

    r = src.records("train")[0]
    neg = next(c for k in ("color", "size") for c in rule_negatives(r.caption, k, src.vocabulary))
    edited = edit_scene(r.image.scene, r.caption, neg, world, random.Random(0))
    assert holds(parse_claim(neg), edited, world.relation_margin)
    assert not holds(parse_claim(r.caption), edited, world.relation_margin)


def test_renderer_editor_refuses_real_images():
    with pytest.raises(ValueError, match="synthetic-world records"):
        RendererEditor().edit(img(), rec("a red circle"), "a red circle", "a blue circle", random.Random(0))


def test_text_rules_priority_puts_relational_rewrites_first():
    src = SyntheticWorldSource(
        World(min_objects=2, max_objects=2, caption_mix={"relation": 1.0}), num_train=200
    )
    gen = TextRules(num_per_caption=1, priority=["position", "swap_objects"])
    plain = TextRules(num_per_caption=1)
    for g in (gen, plain):
        g.vocabulary, g.leak_filter = src.vocabulary, src.leaks
    got, base = Counter(), Counter()
    for rec in src.records("train"):
        if parse_claim(rec.caption).__class__.__name__ != "Relation":
            continue
        image = rec.image.load()
        got.update(n.kind for n in gen(rec, image, random.Random(rec.id)))
        base.update(n.kind for n in plain(rec, image, random.Random(rec.id)))
    relational = got["compositional/position"] + got["compositional/swap_objects"]
    assert relational == sum(got.values()) > 100, got  # every relation caption gets a relational negative
    assert base["compositional/position"] + base["compositional/swap_objects"] < 0.6 * sum(base.values()), (
        base
    )
    with pytest.raises(ValueError, match="priority"):
        TextRules(kinds=["color"], priority=["position"])


def test_hardneg_experiment_gives_every_relation_caption_both_rewrites_and_their_images(cfg_factory):
    """experiment=hardneg as a user runs it: relation captions get a position and a swap rewrite, each with the
    scene re-rendered to match (paired with it); other captions get one lexical rewrite and no image."""
    from lightning_modules.model_factory import ModelSpec
    from lightning_modules.training import build_datamodule

    spec = ModelSpec(name="tiny-vit")
    cfg = cfg_factory("experiment=hardneg")
    assert cfg.data.source.world.min_objects == 2
    dm = build_datamodule(cfg, spec)
    dm.setup("fit")
    ds = dm.datasets["train"]
    rel, both, other = 0, 0, 0
    for i in range(80):
        rec, sample = ds.records[i], ds[i]
        kinds = sorted(k for _, k in sample["neg_texts"])
        relational = [k for k in kinds if k.endswith(("/position", "/swap_objects"))]
        assert len(kinds) - len(relational) <= 1, (rec.caption, kinds)  # at most one lexical rewrite
        if isinstance(parse_claim(rec.caption), Relation):
            rel += 1
            # every image negative is paired with one of this sample's relational text negatives
            assert all(k.endswith(("/position", "/swap_objects")) for _, k, _ in sample["neg_images"])
            assert all(sample["neg_texts"][p][1] == k for _, k, p in sample["neg_images"])
            both += (
                relational == ["compositional/position", "compositional/swap_objects"]
                and len(sample["neg_images"]) == 2
            )
        else:
            other += 1
            assert relational == [] and sample["neg_images"] == [], (rec.caption, kinds)
    assert rel > 25 and other > 5, (rel, other)
    assert both >= 0.8 * rel, (both, rel)


class _Careless(NegativeGenerator):
    """A generator written without any leak or positive handling: returns whatever it is told to."""

    name = "careless"

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def generate(self, record, image, rng):
        return [o(record, image) if callable(o) else o for o in self.outputs]


def test_a_generator_without_leak_handling_cannot_emit_a_heldout_composition():
    src = SyntheticWorldSource(World(), num_train=50, num_val=0, num_test=0)
    rec = src.records("train")[0]
    colour, shape = sorted(src.world.heldout_pairs)[0]
    leak = f"a {colour} {shape}"
    assert src.leaks(leak)
    gen = _Careless(
        [
            lambda r, im: Negative("text", "t/x", leak, "careless", "1"),
            lambda r, im: Negative("text", "t/x", "a purple nothing", "careless", "1"),
        ]
    )
    gen.bind(key="careless", leak_filter=src.leaks, vocabulary=src.vocabulary)
    out = gen(rec, Image.new("RGB", (8, 8)), random.Random(0))
    assert [n.payload for n in out] == ["a purple nothing"]
    assert gen.pop_stats() == {"careless/rejected_heldout": 1}


def test_the_positive_is_never_returned_and_pairs_follow_their_caption():
    rec = Record(id="r", image=None, caption="A red  cube left of a ball")
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    other = Image.new("RGB", (8, 8), (200, 20, 30))
    gen = _Careless(
        [
            Negative("text", "t/a", "a red cube left of a BALL", "careless", "1"),  # the positive, re-spaced
            Negative("text", "t/b", "a blue cube left of a ball", "careless", "1"),
            Negative("image", "t/a", other, "careless", "1", pair=0),  # paired with the dropped caption
            Negative("image", "t/b", other, "careless", "1", pair=1),
            Negative("image", "t/c", image.copy(), "careless", "1"),  # pixel-identical to the positive
        ]
    )
    out = gen(rec, image, random.Random(0))
    assert [(n.modality, n.kind, n.pair) for n in out] == [("text", "t/b", None), ("image", "t/b", 0)]
    assert gen.pop_stats() == {"careless/rejected_positive": 2, "careless/masked": 1}


def test_generators_of_one_class_get_their_own_rng_stream_and_counters():
    from datamodules.negatives.base import sample_rng

    a, b = TextRules(kinds=["color"]), TextRules(kinds=["color"])
    a.bind(key="text_rules"), b.bind(key="swap_rules")
    rec = Record(id="r1", image=None, caption="a red cube")
    assert a.rng(0, rec).random() == sample_rng(0, "text_rules", "r1").random()
    assert a.rng(0, rec).random() != b.rng(0, rec).random()
    b.stats["calls"] += 1
    assert b.pop_stats() == {"swap_rules/calls": 1}
    assert TextRules().run_name == "text_rules"  # unbound: the class name, as before
