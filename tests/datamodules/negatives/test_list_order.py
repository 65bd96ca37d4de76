"""List reorderings: only plain noun-phrase lists, always a different order, and (in the synthetic world) always
still true of the caption's own scene — they are paraphrases, not negatives."""

import random
from collections import Counter

import pytest

from datamodules.negatives.list_order import ListOrder, list_items, reorder
from datamodules.records import Record
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World
from datamodules.world.claims import Exists, holds, parse_claim


def test_list_items_accepts_noun_phrase_lists_only():
    assert list_items("a red cross, a purple circle and a green star") == [
        "a red cross",
        "a purple circle",
        "a green star",
    ]
    assert list_items("two dogs, a cat, and the horse.") == ["two dogs", "a cat", "the horse"]
    assert list_items("a red circle and no blue square") is None  # a negation, not a list
    assert list_items("a small red circle left of a blue square") is None  # one item
    assert list_items("a man and a dog running on the beach") is None  # the second item is a clause
    assert list_items("a man and a dog running on the beach", max_item_words=8) == [
        "a man",
        "a dog running on the beach",
    ]


def test_reorder_is_a_different_order_of_the_same_items_or_none():
    rng = random.Random(0)
    for caption in ["a red cube and a blue ball", "a cat, a dog and a bird", "one cat, one cat and one dog"]:
        for _ in range(20):
            out = reorder(caption, rng)
            assert out != caption and sorted(list_items(out)) == sorted(list_items(caption))
    assert reorder("a cube and a cube", rng) is None  # every order reads the same
    assert reorder("two red circles", rng) is None


def test_synthetic_reorderings_hold_in_their_own_scene_and_are_counted():
    world = World(seed=3)
    src = SyntheticWorldSource(world, num_train=300)
    gen = ListOrder(num_per_caption=2)
    gen.leak_filter = src.leaks
    kinds, emitted = Counter(), 0
    for rec in src.records("train"):
        claim = parse_claim(rec.caption)
        out = gen(rec, None, random.Random(rec.id))
        lists = isinstance(claim, Exists) and len(set(claim.descs)) >= 2
        assert bool(out) == lists, (rec.caption, out)
        for neg in out:
            kinds[neg.kind] += 1
            emitted += 1
            new = parse_claim(neg.payload)
            assert isinstance(new, Exists) and sorted(map(str, new.descs)) == sorted(map(str, claim.descs))
            assert holds(new, rec.image.scene, world.relation_margin)
    assert emitted > 50 and set(kinds) == {"paraphrase/list_order"}
    assert gen.pop_stats()["list_order/not_a_list"] == sum(
        1
        for r in src.records("train")
        if not (isinstance(c := parse_claim(r.caption), Exists) and len(set(c.descs)) >= 2)
    )


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="list_order"):
        ListOrder(num_per_caption=0)
    assert ListOrder()(Record(id="x", image="x.png", caption="a cat"), None, random.Random(0)) == []
