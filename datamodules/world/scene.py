"""Scene graphs of the synthetic compositional world and the world definition (vocabulary, held-out combinations).

A scene is a tuple of objects on a square canvas; coordinates are fractions of the canvas side (0..1) so that a
scene renders identically at any resolution. Everything is deterministic given the world seed and an item key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "cyan": (40, 215, 225),
}
# Radius as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.09, "large": 0.16}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


DEFAULT_CAPTION_MIX = {"relation": 0.40, "exists": 0.30, "count": 0.15, "negation": 0.15}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    def to_json(self) -> list[list]:
        """JSON form: one [shape, colour, size, x, y] list per object (preprocessed manifests carry it)."""
        return [[o.shape, o.color, o.size, o.x, o.y] for o in self.objects]

    @classmethod
    def from_json(cls, rows, where: str = "scene") -> Scene:
        """Inverse of `to_json`; a malformed value raises ValueError naming `where` and the object."""
        if not isinstance(rows, list):
            raise ValueError(
                f"{where}: expected a list of [shape, colour, size, x, y], got {type(rows).__name__}"
            )
        objs = []
        for k, o in enumerate(rows):
            ok = isinstance(o, list) and len(o) == 5
            if ok:
                shape, color, size, x, y = o
                ok = (
                    shape in SHAPES
                    and color in COLORS
                    and size in SIZES
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
                )
            if not ok:
                raise ValueError(f"{where}: object {k} is not a valid [shape, colour, size, x, y]: {o!r}")
            objs.append(Obj(shape, color, size, float(x), float(y)))
        return cls(tuple(objs))


def relation_holds(a: Obj, rel: str, b: Obj, margin: float) -> bool:
    """Spatial predicates on object centres; `margin` keeps the relation visually unambiguous."""
    if rel == "left of":
        return a.x < b.x - margin
    if rel == "right of":
        return a.x > b.x + margin
    if rel == "above":
        return a.y < b.y - margin
    if rel == "below":
        return a.y > b.y + margin
    raise ValueError(f"unknown relation {rel!r}; valid: {RELATIONS}")


@dataclass
class World:
    """The world definition: vocabulary, held-out compositions and scene sampling.

    Args:
        seed: world seed; fixes held-out combinations and every scene of every split.
        min_objects / max_objects: objects per scene.
        num_heldout_pairs: (colour, shape) combinations never rendered in train/val scenes.
        num_heldout_relations: (shape, relation, shape) triples never used in train/val captions.
        duplicate_prob: probability that a scene copies one object's colour+shape (gives counting captions).
        relation_margin: minimum centre offset (canvas fraction) for a spatial relation to hold.
        caption_mix: probabilities of the training caption kinds {relation, exists, count, negation} (normalised);
            None = the default mix 0.40 / 0.30 / 0.15 / 0.15. A kind that a scene cannot have (a relation in a
            one-object scene, a count without duplicates) falls back to the attribute list (`exists`).
    """

    seed: int = 0
    min_objects: int = 1
    max_objects: int = 4
    num_heldout_pairs: int = 6
    num_heldout_relations: int = 8
    duplicate_prob: float = 0.25
    relation_margin: float = 0.12
    caption_mix: dict | None = None
    heldout_pairs: frozenset = field(init=False)
    heldout_relations: frozenset = field(init=False)

    def __post_init__(self) -> None:
        mix = dict(DEFAULT_CAPTION_MIX if self.caption_mix is None else self.caption_mix)
        unknown = set(mix) - set(DEFAULT_CAPTION_MIX)
        if unknown or any(float(v) < 0 for v in mix.values()) or sum(float(v) for v in mix.values()) <= 0:
            raise ValueError(
                f"world.caption_mix: need non-negative weights over {list(DEFAULT_CAPTION_MIX)} with a positive "
                f"sum, got {mix}"
            )
        total = sum(float(v) for v in mix.values())
        self.caption_mix = {k: float(mix.get(k, 0.0)) / total for k in DEFAULT_CAPTION_MIX}
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(
                f"world: need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}"
            )
        rng = random.Random(f"world-{self.seed}-heldout")
        # Held-out colour-shape pairs: a Latin-square-like pick so every colour and shape keeps most partners.
        pairs = [(c, s) for c in COLORS for s in SHAPES]
        rng.shuffle(pairs)
        chosen: list[tuple[str, str]] = []
        used_c: set[str] = set()
        used_s: set[str] = set()
        for c, s in pairs:
            if len(chosen) == self.num_heldout_pairs:
                break
            if c in used_c or s in used_s:
                continue
            chosen.append((c, s))
            used_c.add(c)
            used_s.add(s)
            if len(used_s) == len(SHAPES):
                used_s.clear()
            if len(used_c) == len(COLORS):
                used_c.clear()
        self.heldout_pairs = frozenset(chosen)
        triples = [(a, r, b) for a in SHAPES for r in RELATIONS for b in SHAPES if a != b]
        rng.shuffle(triples)
        self.heldout_relations = frozenset(triples[: self.num_heldout_relations])

    # -- sampling ------------------------------------------------------------------------------------------
    def allowed_pairs(self, heldout_ok: bool) -> list[tuple[str, str]]:
        return [(c, s) for c in COLORS for s in SHAPES if heldout_ok or (c, s) not in self.heldout_pairs]

    def sample_scene(self, rng: random.Random, *, heldout_ok: bool, force_heldout: bool = False) -> Scene:
        """Rejection-samples non-overlapping objects. `force_heldout` puts one held-out colour-shape pair in."""
        n = rng.randint(self.min_objects, self.max_objects)
        pairs = self.allowed_pairs(heldout_ok)
        kinds: list[tuple[str, str]] = [rng.choice(pairs) for _ in range(n)]
        if force_heldout:
            kinds[0] = rng.choice(sorted(self.heldout_pairs))
        if n >= 2 and rng.random() < self.duplicate_prob:
            kinds[1] = kinds[0]
        for _ in range(200):
            objs: list[Obj] = []
            for color, shape in kinds:
                size = rng.choice(tuple(SIZES))
                r = SIZES[size]
                for _try in range(50):
                    x, y = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
                    if all((x - o.x) ** 2 + (y - o.y) ** 2 > (r + o.radius + 0.02) ** 2 for o in objs):
                        objs.append(Obj(shape, color, size, round(x, 4), round(y, 4)))
                        break
                else:
                    break
            if len(objs) == n:
                rng.shuffle(objs)
                return Scene(tuple(objs))
        raise RuntimeError("could not place objects; the canvas is too crowded")  # pragma: no cover

    def contains_heldout_pair(self, scene: Scene) -> bool:
        return any((o.color, o.shape) in self.heldout_pairs for o in scene.objects)


def swap_attribute(scene: Scene, i: int, j: int, attr: str) -> Scene:
    """Scene with attribute `attr` exchanged between objects i and j (used for Winoground-style pairs)."""
    objs = list(scene.objects)
    a, b = objs[i], objs[j]
    objs[i], objs[j] = replace(a, **{attr: getattr(b, attr)}), replace(b, **{attr: getattr(a, attr)})
    return Scene(tuple(objs))
