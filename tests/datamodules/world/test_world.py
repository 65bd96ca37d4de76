import random

import pytest

from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World, render_scene
from datamodules.world.claims import (
    CATEGORIES,
    Count,
    Desc,
    Exists,
    Negation,
    Relation,
    holds,
    mentions_heldout,
    negative_claim,
    positive_for_category,
)
from datamodules.world.scene import Obj, Scene, relation_holds


def test_world_is_deterministic():
    a = SyntheticWorldSource(World(seed=3), num_train=50, num_val=5, num_test=20)
    b = SyntheticWorldSource(World(seed=3), num_train=50, num_val=5, num_test=20)
    for split in ("train", "val", "test"):
        ra, rb = a.records(split), b.records(split)
        assert [r.caption for r in ra] == [r.caption for r in rb]
        assert [r.image.scene for r in ra] == [r.image.scene for r in rb]
    assert (
        render_scene(a.records("train")[7].image.scene).tobytes()
        == render_scene(b.records("train")[7].image.scene).tobytes()
    )
    c = SyntheticWorldSource(World(seed=4), num_train=50, num_val=0, num_test=0)
    assert [r.caption for r in c.records("train")] != [r.caption for r in a.records("train")]
    assert (
        a.world.heldout_pairs != c.world.heldout_pairs
        or a.world.heldout_relations != c.world.heldout_relations
    )


def test_world_vocabulary_is_rich():
    src = SyntheticWorldSource(World(), num_train=2000, num_val=0, num_test=0)
    scenes = [r.image.scene for r in src.records("train")]
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == {"circle", "square", "triangle", "star", "cross", "diamond"}
    assert len({o.color for o in objs}) == 8 and {o.size for o in objs} == {"small", "large"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}
    kinds = {r.meta["claim_kind"] for r in src.records("train")}
    assert kinds == {"relation", "exists", "count", "negation"}
    for rel in ("to the left of", "to the right of", "above", "below"):
        assert any(rel in r.caption for r in src.records("train"))


def test_split_hygiene_no_heldout_combination_leaks_into_training():
    world = World(seed=0)
    src = SyntheticWorldSource(world, num_train=3000, num_val=300, num_test=600)
    for split in ("train", "val"):
        for r in src.records(split):
            scene = r.image.scene
            assert not world.contains_heldout_pair(scene), (r.id, scene)
            for c, s in world.heldout_pairs:
                assert f"{c} {s}" not in r.caption, (r.id, r.caption)
            for a, rel, b in world.heldout_relations:
                assert not _uses_triple(r.caption, a, rel, b), (r.id, r.caption)
            assert r.meta["heldout"] is False
    test = src.records("test")
    frac = sum(r.meta["heldout"] for r in test) / len(test)
    assert 0.3 < frac < 0.9, frac
    assert any(world.contains_heldout_pair(r.image.scene) for r in test)


def _uses_triple(caption: str, a: str, rel: str, b: str) -> bool:
    rel_text = {"left of": "to the left of", "right of": "to the right of"}.get(rel, rel)
    if f" {rel_text} " not in caption:
        return False
    left, right = caption.split(f" {rel_text} ", 1)
    return left.endswith(a) and right.split()[-1] == b


def test_heldout_relation_triples_never_captioned_in_train():
    world = World(seed=0)
    src = SyntheticWorldSource(world, num_train=3000, num_val=0, num_test=0)
    for r in src.records("train"):
        for a, rel, b in world.heldout_relations:
            assert not _uses_triple(r.caption, a, rel, b), r.caption


def test_training_captions_are_true_of_their_scene():
    world = World()
    src = SyntheticWorldSource(world, num_train=500, num_val=0, num_test=300)
    for split in ("train", "test"):
        for i, r in enumerate(src.records(split)):
            scene, rng = src.scene(split, i)
            assert scene == r.image.scene


def test_claim_semantics():
    red_circle = Obj("circle", "red", "small", 0.2, 0.5)
    blue_square = Obj("square", "blue", "large", 0.8, 0.5)
    s = Scene((red_circle, blue_square))
    m = 0.12
    assert relation_holds(red_circle, "left of", blue_square, m)
    assert holds(Relation(Desc("circle", "red"), "left of", Desc("square", "blue")), s, m)
    assert not holds(Relation(Desc("square", "blue"), "left of", Desc("circle", "red")), s, m)
    assert not holds(Relation(Desc("circle", "red"), "above", Desc("square", "blue")), s, m)
    assert holds(Exists((Desc("circle", "red", "small"), Desc("square"))), s, m)
    assert not holds(Exists((Desc("circle", "blue"),)), s, m)
    assert holds(Count(Desc("circle", "red"), 1), s, m) and not holds(Count(Desc("circle", "red"), 2), s, m)
    assert holds(Negation(Desc("circle", "red"), Desc("star", "red")), s, m)
    assert not holds(Negation(Desc("circle", "red"), Desc("square", "blue")), s, m)
    assert Relation(Desc("circle", "red", "small"), "left of", Desc("square", "blue", "large")).text() == (
        "a small red circle to the left of a large blue square"
    )
    assert Count(Desc("cross", "orange"), 2).text() == "two orange crosses"
    assert Negation(Desc("circle", "red"), Desc("star", "orange")).text() == "a red circle and no orange star"
    assert Exists((Desc("star", "orange", "large"),)).text() == "a large orange star"


@pytest.mark.parametrize("category", CATEGORIES)
def test_benchmark_negatives_are_false_and_positives_true(category):
    world = World()
    src = SyntheticWorldSource(world, num_train=0, num_val=0, num_test=400)
    rng = random.Random(0)
    made = 0
    for i in range(400):
        scene, _ = src.scene("test", i)
        pos = positive_for_category(category, scene, rng, world)
        if pos is None:
            continue
        neg = negative_claim(pos, category, scene, rng, world.relation_margin)
        if neg is None:
            continue
        made += 1
        assert holds(pos, scene, world.relation_margin)
        assert not holds(neg, scene, world.relation_margin)
        assert neg.text() != pos.text()
    assert made >= 40, f"{category}: only {made} items from 400 scenes"


def test_mentions_heldout():
    world = World()
    (c, s) = sorted(world.heldout_pairs)[0]
    assert mentions_heldout(Exists((Desc(s, c),)), world)
    a, rel, b = sorted(world.heldout_relations)[0]
    assert (
        mentions_heldout(Relation(Desc(a, "red"), rel, Desc(b, "red")), world)
        or ("red", a) in world.heldout_pairs
    )


def test_world_rejects_bad_config():
    with pytest.raises(ValueError, match="min_objects"):
        World(min_objects=3, max_objects=2)


def test_caption_mix_changes_shares_and_default_is_unchanged():
    from collections import Counter

    from datamodules.world.claims import caption_claim

    def shares(world):
        c = Counter()
        for i in range(1500):
            rng = random.Random(i)
            scene = world.sample_scene(rng, heldout_ok=False)
            c[type(caption_claim(scene, rng, world, heldout_ok=False)).__name__] += 1
        return c

    explicit = shares(World(caption_mix={"relation": 0.4, "exists": 0.3, "count": 0.15, "negation": 0.15}))
    assert shares(World()) == explicit
    heavy = shares(World(min_objects=2, max_objects=2, caption_mix={"relation": 1.0}))
    assert heavy["Relation"] > 0.8 * 1500, heavy
    assert heavy["Count"] == heavy["Negation"] == 0
    with pytest.raises(ValueError, match="caption_mix"):
        World(caption_mix={"relations": 1.0})
    with pytest.raises(ValueError, match="caption_mix"):
        World(caption_mix={"relation": 0.0})
