"""Captions of the synthetic world as structured claims: generated from a scene, rendered to English by a small
grammar, and checked against any scene by `holds`. Every negative is verified false, every positive true.

Claim kinds: `Exists` (attribute lists), `Relation` (spatial), `Count` (exact counts), `Negation` ("... and no ...").
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

from datamodules.world.scene import (
    COLORS,
    OPPOSITE,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    World,
    relation_holds,
)

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
RELATION_TEXT = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}


@dataclass(frozen=True)
class Desc:
    shape: str
    color: str | None = None
    size: str | None = None

    def matches(self, o: Obj) -> bool:
        return (
            o.shape == self.shape
            and (self.color is None or o.color == self.color)
            and (self.size is None or o.size == self.size)
        )

    def words(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.shape) if w)

    def text(self) -> str:
        w = self.words()
        return ("an " if w[0] in "aeiou" else "a ") + w

    def plural(self, n: int) -> str:
        shape = self.shape + ("es" if self.shape.endswith(("s", "x", "ss")) else "s")
        return " ".join(w for w in (NUMBERS[n], self.size, self.color, shape) if w)

    @staticmethod
    def of(o: Obj, *, with_size: bool = True) -> Desc:
        return Desc(o.shape, o.color, o.size if with_size else None)


@dataclass(frozen=True)
class Exists:
    descs: tuple[Desc, ...]

    def text(self) -> str:
        parts = [d.text() for d in self.descs]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass(frozen=True)
class Relation:
    a: Desc
    rel: str
    b: Desc

    def text(self) -> str:
        return f"{self.a.text()} {RELATION_TEXT[self.rel]} {self.b.text()}"


@dataclass(frozen=True)
class Count:
    desc: Desc
    n: int

    def text(self) -> str:
        return (
            self.desc.plural(self.n)
            if self.n > 1
            else self.desc.text().replace("a ", "one ", 1).replace("an ", "one ", 1)
        )


@dataclass(frozen=True)
class Negation:
    pos: Desc
    neg: Desc

    def text(self) -> str:
        return f"{self.pos.text()} and no {self.neg.words()}"


Claim = Exists | Relation | Count | Negation


def random_object(d: Desc, rng: random.Random) -> Obj:
    """An object matching `d` (unspecified colour/size drawn at random) at a random position on the canvas."""
    size = d.size or rng.choice(tuple(SIZES))
    r = SIZES[size]
    return Obj(
        d.shape,
        d.color or rng.choice(tuple(COLORS)),
        size,
        round(rng.uniform(r, 1 - r), 4),
        round(rng.uniform(r, 1 - r), 4),
    )


def overlaps(o: Obj, others) -> bool:
    return any((o.x - p.x) ** 2 + (o.y - p.y) ** 2 <= (o.radius + p.radius + 0.02) ** 2 for p in others)


def holds(claim: Claim, scene: Scene, margin: float) -> bool:
    objs = scene.objects
    if isinstance(claim, Exists):
        k = len(claim.descs)
        return any(
            all(d.matches(objs[i]) for d, i in zip(claim.descs, perm))
            for perm in itertools.permutations(range(len(objs)), k)
        )
    if isinstance(claim, Relation):
        return any(
            claim.a.matches(objs[i])
            and claim.b.matches(objs[j])
            and relation_holds(objs[i], claim.rel, objs[j], margin)
            for i, j in itertools.permutations(range(len(objs)), 2)
        )
    if isinstance(claim, Count):
        return sum(claim.desc.matches(o) for o in objs) == claim.n
    if isinstance(claim, Negation):
        return any(claim.pos.matches(o) for o in objs) and not any(claim.neg.matches(o) for o in objs)
    raise TypeError(f"unknown claim {claim!r}")


def claim_descs(claim: Claim) -> tuple[Desc, ...]:
    if isinstance(claim, Exists):
        return claim.descs
    if isinstance(claim, Relation):
        return (claim.a, claim.b)
    if isinstance(claim, Count):
        return (claim.desc,)
    return (claim.pos, claim.neg)


def mentions_heldout(claim: Claim, world: World) -> bool:
    """True when the caption names a held-out colour-shape pair or uses a held-out relation triple."""
    if any((d.color, d.shape) in world.heldout_pairs for d in claim_descs(claim)):
        return True
    return (
        isinstance(claim, Relation) and (claim.a.shape, claim.rel, claim.b.shape) in world.heldout_relations
    )


# -- positive claims --------------------------------------------------------------------------------------------
def relation_claim(
    scene: Scene, rng: random.Random, world: World, *, heldout_ok: bool, prefer_heldout: bool = False
) -> Relation | None:
    objs = scene.objects
    options = []
    for i, j in itertools.permutations(range(len(objs)), 2):
        for rel in RELATIONS:
            if relation_holds(objs[i], rel, objs[j], world.relation_margin):
                options.append(Relation(Desc.of(objs[i]), rel, Desc.of(objs[j])))
    if not heldout_ok:
        options = [c for c in options if not mentions_heldout(c, world)]
    if prefer_heldout:
        held = [c for c in options if (c.a.shape, c.rel, c.b.shape) in world.heldout_relations]
        options = held or options
    # The generating pair must be the only reading that makes the caption true with swapped roles false.
    options = [c for c in options if not holds(Relation(c.b, c.rel, c.a), scene, world.relation_margin)]
    return rng.choice(options) if options else None


def exists_claim(scene: Scene, rng: random.Random) -> Exists:
    objs = list(scene.objects)
    rng.shuffle(objs)
    return Exists(tuple(Desc.of(o) for o in objs))


def count_claim(scene: Scene, rng: random.Random) -> Count | None:
    groups: dict[Desc, int] = {}
    for o in scene.objects:
        d = Desc(o.shape, o.color)
        groups[d] = groups.get(d, 0) + 1
    multi = [(d, n) for d, n in groups.items() if n >= 2]
    if not multi:
        return None
    d, n = rng.choice(sorted(multi, key=lambda t: (t[0].shape, t[0].color)))
    return Count(d, n)


def negation_claim(scene: Scene, rng: random.Random, world: World, *, heldout_ok: bool) -> Negation:
    o = rng.choice(scene.objects)
    absent = [
        (c, s)
        for c, s in world.allowed_pairs(heldout_ok)
        if not any(x.color == c and x.shape == s for x in scene.objects)
    ]
    c, s = rng.choice(absent)
    return Negation(Desc(o.shape, o.color), Desc(s, c))


def caption_claim(scene: Scene, rng: random.Random, world: World, *, heldout_ok: bool) -> Claim:
    """The training caption of a scene, drawn from `world.caption_mix` (default: relation 40%, attribute list 30%,
    count 15%, negation 15%; one uniform draw against the cumulative mix in that order)."""
    r = rng.random()
    # Past the last edge (float rounding of the normalised mix) counts as negation when it has weight.
    drawn = "negation" if world.caption_mix["negation"] > 0 else "exists"
    upper = 0.0
    for kind, w in world.caption_mix.items():  # in the order relation, exists, count, negation
        upper += w
        if r < upper:
            drawn = kind
            break
    if drawn == "relation" and len(scene.objects) >= 2:
        c = relation_claim(scene, rng, world, heldout_ok=heldout_ok)
        if c is not None:
            return c
    if drawn == "count":
        c = count_claim(scene, rng)
        if c is not None:
            return c
    if drawn == "negation":
        return negation_claim(scene, rng, world, heldout_ok=heldout_ok)
    return exists_claim(scene, rng)


# -- negatives (benchmark categories) ----------------------------------------------------------------------------
CATEGORIES = (
    "replace_color",
    "replace_shape",
    "replace_size",
    "replace_relation",
    "swap_attributes",
    "swap_objects",
    "count",
    "negation",
)
_VOCAB = {"color": tuple(COLORS), "shape": SHAPES, "size": tuple(SIZES)}


def _replace_in(claim: Claim, idx: int, new: Desc) -> Claim:
    if isinstance(claim, Exists):
        descs = list(claim.descs)
        descs[idx] = new
        return Exists(tuple(descs))
    if isinstance(claim, Relation):
        return replace(claim, a=new) if idx == 0 else replace(claim, b=new)
    raise TypeError(claim)


def negative_claim(
    claim: Claim, category: str, scene: Scene, rng: random.Random, margin: float
) -> Claim | None:
    """A claim of the given category that is false for `scene`, or None when none can be made."""
    candidates: list[Claim] = []
    if category.startswith("replace_") and category != "replace_relation":
        attr = category.removeprefix("replace_")
        if isinstance(claim, (Exists, Relation)):
            for idx, d in enumerate(claim_descs(claim)):
                for v in _VOCAB[attr]:
                    if getattr(d, attr) not in (None, v):
                        candidates.append(_replace_in(claim, idx, replace(d, **{attr: v})))
    elif category == "replace_relation" and isinstance(claim, Relation):
        candidates = [replace(claim, rel=r) for r in RELATIONS if r != claim.rel]
    elif category == "swap_attributes" and isinstance(claim, (Exists, Relation)):
        descs = claim_descs(claim)
        for i, j in itertools.combinations(range(len(descs)), 2):
            for attr in ("color", "size"):
                a, b = descs[i], descs[j]
                if getattr(a, attr) != getattr(b, attr):
                    new = list(descs)
                    new[i], new[j] = (
                        replace(a, **{attr: getattr(b, attr)}),
                        replace(b, **{attr: getattr(a, attr)}),
                    )
                    candidates.append(
                        Exists(tuple(new))
                        if isinstance(claim, Exists)
                        else Relation(new[0], claim.rel, new[1])
                    )
    elif category == "swap_objects" and isinstance(claim, Relation):
        candidates = [Relation(claim.b, claim.rel, claim.a)]
    elif category == "count" and isinstance(claim, Count):
        candidates = [Count(claim.desc, n) for n in (claim.n - 1, claim.n + 1) if n >= 1]
    elif category == "negation" and isinstance(claim, Negation):
        candidates = [Exists((claim.pos, claim.neg))]
    candidates = [c for c in candidates if not holds(c, scene, margin)]
    return rng.choice(candidates) if candidates else None


def positive_for_category(
    category: str, scene: Scene, rng: random.Random, world: World, *, prefer_heldout: bool = False
) -> Claim | None:
    if category in ("replace_relation", "swap_objects", "swap_attributes"):
        return relation_claim(scene, rng, world, heldout_ok=True, prefer_heldout=prefer_heldout)
    if category == "count":
        return count_claim(scene, rng)
    if category == "negation":
        return negation_claim(scene, rng, world, heldout_ok=True)
    if len(scene.objects) >= 2 and rng.random() < 0.5:
        c = relation_claim(scene, rng, world, heldout_ok=True, prefer_heldout=prefer_heldout)
        if c is not None:
            return c
    return exists_claim(scene, rng)


__all__ = [
    "CATEGORIES",
    "OPPOSITE",
    "Claim",
    "Count",
    "Desc",
    "Exists",
    "Negation",
    "Relation",
    "caption_claim",
    "holds",
    "mentions_heldout",
    "negative_claim",
    "positive_for_category",
]


# -- parsing (the renderer editor reads negative captions back into claims) ----------------------------------------
_ARTICLES = ("a ", "an ")
_WORD_NUM = {v: k for k, v in NUMBERS.items()}


def _parse_desc(words: list[str], plural: bool = False) -> Desc | None:
    if not words:
        return None
    *mods, shape = words
    if plural:
        shape = shape[:-2] if shape.endswith("sses") or shape.endswith("xes") else shape[:-1]
    if shape not in SHAPES:
        return None
    size = color = None
    for w in mods:
        if w in SIZES and size is None and color is None:
            size = w
        elif w in COLORS and color is None:
            color = w
        else:
            return None
    return Desc(shape, color, size)


def _parse_np(text: str) -> Desc | None:
    text = text.strip()
    for art in _ARTICLES:
        if text.startswith(art):
            return _parse_desc(text[len(art) :].split())
    return None


def parse_claim(text: str) -> Claim | None:
    """Inverse of `Claim.text()` for the world's grammar; None for any other sentence."""
    text = " ".join(text.lower().split())
    if " and no " in text:
        left, right = text.split(" and no ", 1)
        pos, neg = _parse_np(left), _parse_desc(right.split())
        return Negation(pos, neg) if pos and neg else None
    for rel, phrase in RELATION_TEXT.items():
        if f" {phrase} " in text:
            left, right = text.split(f" {phrase} ", 1)
            a, b = _parse_np(left), _parse_np(right)
            return Relation(a, rel, b) if a and b else None
    first = text.split(" ", 1)[0]
    if first in _WORD_NUM:
        n = _WORD_NUM[first]
        d = _parse_desc(text.split()[1:], plural=n > 1)
        return Count(d, n) if d else None
    parts = [p for chunk in text.split(", ") for p in chunk.split(" and ")]
    descs = [_parse_np(p) for p in parts]
    return Exists(tuple(descs)) if descs and all(descs) else None
