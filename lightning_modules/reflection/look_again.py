"""Look again (Reflection-V style): a caption is checked by targeted visual questions, answered *with the image*,
and revised from the answers, for up to K rounds; every round is kept as a trace usable as SFT data.

    requester = RuleRequester()                          # what to ask about a caption (text only, no image)
    responder = SceneResponder(world, error_rate=0.1)    # answers from the image (here: the scene graph)
    result = look_again(caption, scene, requester, responder, rounds=2)
    result.caption, result.trace                         # revised caption; [{"round", "qa": [...], "revised"}]

The roles follow the paper's interaction: a *requester* (a text LLM, or the VLM without the image) turns the current
caption into questions about colours, presence, counts and positions; the *responder* (the VLM, with the image)
answers them; the *summariser* (`revise`) rewrites the caption from the answers. This module holds the symbolic
backends of the synthetic world: questions come from the caption's parsed claim, answers from the scene graph with a
configurable error rate (a wrong colour / count / relation, a flipped yes/no), so the loop is measurable without
weights; caption truth is exact (`holds()`). `SceneResponder` is the interface a real VLM responder implements
(`answer(image_or_scene, question) -> str`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datamodules.world import World
from datamodules.world.claims import (
    Claim,
    Count,
    Desc,
    Exists,
    Negation,
    Relation,
    holds,
    parse_claim,
)
from datamodules.world.scene import COLORS, RELATIONS, SHAPES, Scene, relation_holds


@dataclass(frozen=True)
class Question:
    kind: str  # exists | colour | shape | relation | where | count
    text: str
    desc: Desc
    other: Desc | None = None  # relation questions: the second object
    rel: str | None = None


class RuleRequester:
    """Questions about every object a caption mentions: is it there (as described); for a relation, does it hold;
    for a count, how many. Follow-ups (colour, where) are asked by `look_again` when an answer contradicts."""

    def questions(self, claim: Claim) -> list[Question]:
        if isinstance(claim, Exists):
            return [Question("exists", f"Is there {d.text()}?", d) for d in claim.descs]
        if isinstance(claim, Negation):
            return [
                Question("exists", f"Is there {claim.pos.text()}?", claim.pos),
                Question("exists", f"Is there {claim.neg.text()}?", claim.neg),
            ]
        if isinstance(claim, Count):
            return [
                Question("count", f"How many {claim.desc.plural(2).split(' ', 1)[1]} are there?", claim.desc)
            ]
        if isinstance(claim, Relation):
            return [
                Question("exists", f"Is there {claim.a.text()}?", claim.a),
                Question("exists", f"Is there {claim.b.text()}?", claim.b),
                Question(
                    "relation",
                    f"Is {claim.a.text()} {claim.rel} {claim.b.text()}?",
                    claim.a,
                    claim.b,
                    claim.rel,
                ),
            ]
        raise TypeError(f"unknown claim {claim!r}")


class SceneResponder:
    """Answers visual questions from the scene graph; with probability `error_rate` an answer is wrong."""

    def __init__(self, world: World | None = None, error_rate: float = 0.0) -> None:
        if not 0 <= error_rate <= 1:
            raise ValueError(f"responder.error_rate must be in [0, 1], got {error_rate}")
        self.world = world or World()
        self.error_rate = error_rate

    def describe(self, scene: Scene, rng: random.Random) -> str:
        """'What is in the image?': a fresh caption of the scene (one colour wrong with probability error_rate)."""
        from datamodules.world.claims import caption_claim

        words = caption_claim(scene, rng, self.world, heldout_ok=False).text().split()
        idx = [i for i, w in enumerate(words) if w in COLORS]
        if idx and rng.random() < self.error_rate:
            i = rng.choice(idx)
            words[i] = rng.choice([c for c in COLORS if c != words[i]])
        return " ".join(words)

    def answer(self, scene: Scene, q: Question, rng: random.Random) -> str:
        wrong = rng.random() < self.error_rate
        objs = scene.objects
        if q.kind == "exists":
            yes = any(q.desc.matches(o) for o in objs)
            return "yes" if yes != wrong else "no"
        if q.kind == "count":
            n = sum(q.desc.matches(o) for o in objs)
            return str(max(0, n + (rng.choice([-1, 1]) if wrong else 0)))
        if q.kind in (
            "shape",
            "colour",
        ):  # the asked attribute of an object with the other one (and the size)
            known, asked, values = (
                ("color", "shape", SHAPES) if q.kind == "shape" else ("shape", "color", COLORS)
            )
            cands = [
                o
                for o in objs
                if getattr(o, known) == getattr(q.desc, known)
                and (q.desc.size is None or o.size == q.desc.size)
            ]
            if not cands:
                return "none"
            value = getattr(rng.choice(cands), asked)
            return rng.choice([v for v in values if v != value]) if wrong else value
        if q.kind in ("relation", "where"):
            m = self.world.relation_margin
            pairs = [
                (a, b) for a in objs for b in objs if a is not b and q.desc.matches(a) and q.other.matches(b)
            ]
            true_rels = [r for r in RELATIONS if any(relation_holds(a, r, b, m) for a, b in pairs)]
            if q.kind == "relation":
                return "yes" if (q.rel in true_rels) != wrong else "no"
            if wrong or not true_rels:
                return rng.choice([r for r in RELATIONS if r not in true_rels] or list(RELATIONS))
            return rng.choice(true_rels)
        raise ValueError(f"unknown question kind {q.kind!r}")


def _with_desc(claim: Claim, old: Desc, new: Desc) -> Claim:
    if isinstance(claim, Exists):
        return Exists(tuple(new if d == old else d for d in claim.descs))
    if isinstance(claim, Negation):
        return Negation(new if claim.pos == old else claim.pos, new if claim.neg == old else claim.neg)
    if isinstance(claim, Relation):
        return Relation(new if claim.a == old else claim.a, claim.rel, new if claim.b == old else claim.b)
    if isinstance(claim, Count):
        return Count(new, claim.n)
    return claim


@dataclass
class LookResult:
    caption: str
    initial: str
    trace: list[dict[str, Any]] = field(default_factory=list)
    parsed: bool = True

    @property
    def revised(self) -> bool:
        return self.caption != self.initial


def look_again(
    caption: str,
    scene: Scene,
    requester: RuleRequester,
    responder: SceneResponder,
    *,
    rounds: int = 2,
    seed: int = 0,
    describe_fallback: bool = False,
) -> LookResult:
    """Up to `rounds` rounds of ask → answer (with the image) → revise; stops early when a round confirms the
    caption. A caption outside the world's grammar is returned unchanged (`parsed=False`).

    describe_fallback: when a round's answers contradict the caption but no follow-up could fix it (e.g. none of
    the objects it names is in the image: a caption of another image), ask "What is in the image?" and take the
    answer as the revision (the summariser writing afresh from what it saw)."""
    rng = random.Random(seed)
    claim = parse_claim(caption)
    result = LookResult(caption, caption)
    if claim is None:
        result.parsed = False
        return result
    for r in range(rounds):
        qa, new, contradicted = [], claim, False
        for q in requester.questions(new):
            a = responder.answer(scene, q, rng)
            qa.append({"q": q.text, "a": a})
            negated = isinstance(new, Negation) and q.desc == new.neg
            contradicted |= (q.kind == "exists" and (a == "no") != negated) or (
                q.kind == "relation" and a == "no"
            )
            if q.kind == "exists" and (a == "no") != negated:
                if negated:  # the caption says "no X" but there is one: name a colour nobody has
                    f = Question(
                        "colour", f"What colours do the {q.desc.shape}s have?", replace(q.desc, color=None)
                    )
                    seen = {responder.answer(scene, f, rng)}
                    qa.append({"q": f.text, "a": ", ".join(sorted(seen))})
                    free = [c for c in COLORS if c not in seen and c != q.desc.color]
                    if free:
                        new = _with_desc(new, q.desc, replace(q.desc, color=rng.choice(free)))
                    continue
                f = Question(
                    "colour",
                    f"What colour is the {' '.join(w for w in (q.desc.size, q.desc.shape) if w)}?",
                    replace(q.desc, color=None),
                )
                colour = responder.answer(scene, f, rng)
                qa.append({"q": f.text, "a": colour})
                if colour in COLORS and colour != q.desc.color:
                    new = _with_desc(new, q.desc, replace(q.desc, color=colour))
                elif colour == "none" and q.desc.color:  # no such shape: ask what the coloured object is
                    words = " ".join(w for w in (q.desc.size, q.desc.color) if w)
                    f = Question("shape", f"What shape is the {words} object?", q.desc)
                    shape = responder.answer(scene, f, rng)
                    qa.append({"q": f.text, "a": shape})
                    if shape in SHAPES and shape != q.desc.shape:
                        new = _with_desc(new, q.desc, replace(q.desc, shape=shape))
            elif (
                q.kind == "count"
                and isinstance(new, Count)
                and a.isdigit()
                and int(a) != new.n
                and int(a) > 0
            ):
                new = Count(new.desc, min(int(a), 4))
            elif q.kind == "relation" and a == "no" and isinstance(new, Relation):
                f = Question("where", f"Where is {new.a.text()} relative to {new.b.text()}?", new.a, new.b)
                where = responder.answer(scene, f, rng)
                qa.append({"q": f.text, "a": where})
                if where in RELATIONS and where != new.rel:
                    new = Relation(new.a, where, new.b)
        if describe_fallback and contradicted and new == claim:
            seen = responder.describe(scene, rng)
            qa.append({"q": "What is in the image?", "a": seen})
            fresh = parse_claim(seen)
            if fresh is not None:
                new = fresh
        result.trace.append({"round": r, "qa": qa, "before": claim.text(), "revised": new.text()})
        if new == claim:
            break
        claim = new
    result.caption = claim.text()
    return result


def sft_record(image_ref: str, prompt: str, result: LookResult) -> dict[str, Any]:
    """A look-again trace as one chat-format SFT example: the caption, each round's questions and answers, the
    revision (the 'thinking slowly' the captioner is trained to produce); the `reflect` stage's format."""
    from datamodules.preprocess.stages.reflect import sft_messages

    return {
        "messages": sft_messages(image_ref, prompt, result.initial, result.trace),
        "final": result.caption,
    }


def write_traces(path: str | Path, records: list[dict[str, Any]]) -> Path:
    from datamodules.atomic import atomic_write_text

    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    return path


def truth(caption: str, scene: Scene, world: World) -> bool:
    claim = parse_claim(caption)
    return claim is not None and holds(claim, scene, world.relation_margin)


class SceneReflector:
    """The `reflect` stage's backend on the synthetic world: `look_again` with the rule requester and the
    scene-graph responder (wrong with probability `error_rate`), on records whose image carries its scene graph
    (`SceneImage`). Args: world; error_rate of the responder; rounds: ask-answer-revise rounds per call."""

    def __init__(
        self,
        world: World | None = None,
        error_rate: float = 0.1,
        rounds: int = 2,
        describe_fallback: bool = True,
    ) -> None:
        if rounds < 1:
            raise ValueError(f"reflect rounds must be >= 1, got {rounds}")
        self.world = world or World()
        self.requester = RuleRequester()
        self.responder = SceneResponder(self.world, error_rate)
        self.rounds, self.describe_fallback = rounds, describe_fallback

    def identity(self) -> dict:
        return {
            "backend": "scene_reflector",
            "error_rate": self.responder.error_rate,
            "rounds": self.rounds,
            "describe_fallback": self.describe_fallback,
            "world": self.world.seed,
        }

    def reflect(self, images: list, records: list, seeds: list[int]) -> list[dict | None]:
        out: list[dict | None] = []
        for record, seed in zip(records, seeds):
            scene = getattr(record.image, "scene", None)
            if scene is None:
                raise ValueError(
                    f"the scene reflector needs synthetic-world images (SceneImage); record {record.id} has none "
                    "(use reflect_vlm for real images)"
                )
            res = look_again(
                record.caption,
                scene,
                self.requester,
                self.responder,
                rounds=self.rounds,
                seed=seed,
                describe_fallback=self.describe_fallback,
            )
            out.append(
                None
                if not res.parsed
                else {"caption": res.caption, "initial": res.initial, "trace": res.trace}
            )
        return out
