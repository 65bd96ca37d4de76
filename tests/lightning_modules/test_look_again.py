"""Look-again loop (lightning_modules/reflection/look_again.py) with the symbolic backends of the synthetic world."""

from __future__ import annotations

import json

import pytest

from datamodules.world import World
from datamodules.world.claims import Desc, Relation, holds
from datamodules.world.scene import Obj, Scene
from lightning_modules.reflection.look_again import (
    RuleRequester,
    SceneResponder,
    look_again,
    sft_record,
    truth,
    write_traces,
)

WORLD = World(seed=0)
# a small red circle on the left, a large blue square on the right
SCENE = Scene((Obj("circle", "red", "small", 0.2, 0.5), Obj("square", "blue", "large", 0.8, 0.5)))


def test_a_wrong_colour_is_asked_about_and_fixed():
    res = look_again(
        "a small green circle and a large blue square", SCENE, RuleRequester(), SceneResponder(WORLD)
    )
    assert res.caption == "a small red circle and a large blue square" and res.revised
    first = res.trace[0]
    assert first["before"] == "a small green circle and a large blue square"
    assert {"q": "Is there a small green circle?", "a": "no"} in first["qa"]
    assert {"q": "What colour is the small circle?", "a": "red"} in first["qa"]
    assert res.trace[-1]["revised"] == res.caption and len(res.trace) == 2  # the second round confirms


def test_a_wrong_relation_is_fixed_and_a_true_caption_is_left_alone():
    wrong = Relation(Desc("circle", "red", "small"), "right of", Desc("square", "blue", "large")).text()
    res = look_again(wrong, SCENE, RuleRequester(), SceneResponder(WORLD))
    assert "left of" in res.caption and truth(res.caption, SCENE, WORLD) and not truth(wrong, SCENE, WORLD)
    ok = look_again(res.caption, SCENE, RuleRequester(), SceneResponder(WORLD))
    assert not ok.revised and len(ok.trace) == 1


def test_unparseable_captions_pass_unchanged_and_bad_error_rates_are_refused():
    res = look_again("a photo of a dog", SCENE, RuleRequester(), SceneResponder(WORLD))
    assert not res.parsed and res.caption == "a photo of a dog" and res.trace == []
    with pytest.raises(ValueError, match="error_rate"):
        SceneResponder(WORLD, error_rate=1.5)


def test_noisy_responder_can_break_true_captions_and_traces_are_sft_records(tmp_path):
    true = Relation(Desc("circle", "red", "small"), "left of", Desc("square", "blue", "large")).text()
    assert truth(true, SCENE, WORLD)
    broken = 0
    for seed in range(200):
        res = look_again(true, SCENE, RuleRequester(), SceneResponder(WORLD, error_rate=0.5), seed=seed)
        broken += not truth(res.caption, SCENE, WORLD)
    assert 0 < broken < 200  # wrong answers sometimes mislead the summariser, not always
    rec = sft_record(
        "img-1",
        "Describe the image.",
        look_again("a small green circle", SCENE, RuleRequester(), SceneResponder(WORLD)),
    )
    roles = [m["role"] for m in rec["messages"]]
    assert roles[:2] == ["user", "assistant"] and roles.count("assistant") == 1 + len(roles[2:]) // 2
    assert rec["messages"][2]["content"].startswith("Look again. ") and rec["final"] == "a small red circle"
    path = write_traces(tmp_path / "t.jsonl", [rec])
    assert json.loads(path.read_text().splitlines()[0]) == rec
    assert holds(
        Relation(Desc("circle", "red", "small"), "left of", Desc("square")), SCENE, WORLD.relation_margin
    )


def test_a_shape_the_image_does_not_have_is_replaced_by_the_coloured_objects_shape():
    res = look_again(
        "a small red star and a large blue square", SCENE, RuleRequester(), SceneResponder(WORLD)
    )
    assert res.caption == "a small red circle and a large blue square"
    assert {"q": "What shape is the small red object?", "a": "circle"} in res.trace[0]["qa"]
