"""The synthetic compositional world as a data source (ARCHITECTURE §5).

Train/val scenes never contain a held-out colour-shape pair, and their captions never name one nor use a
held-out relation triple; test scenes are drawn from the full world, half of them forced to contain held-out
compositions (`meta["heldout"]` says which records do).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache

from PIL import Image

from datamodules.records import Record, load_image
from datamodules.sources.base import SPLITS, Source
from datamodules.world.claims import caption_claim, mentions_heldout, parse_claim, relation_claim
from datamodules.world.render import render_scene
from datamodules.world.scene import COLORS, SHAPES, SIZES, Scene, World


@dataclass(frozen=True)
class SceneImage:
    """An `ImageRef` that renders its scene on demand (cheap, deterministic, picklable for loader workers)."""

    scene: Scene
    size: int

    @property
    def key(self) -> str:
        return "scene:" + hashlib.sha1(f"{self.scene!r}:{self.size}".encode()).hexdigest()[:16]

    def load(self) -> Image.Image:
        return render_scene(self.scene, self.size)


@dataclass(frozen=True)
class SceneFile:
    """An `ImageRef` for a written render of a known scene (preprocessed manifests of the synthetic world): loads
    the file, and carries the scene graph so the renderer editor can re-render it edited (I'_C). Its key is the
    path, as for a plain file record."""

    path: str
    scene: Scene

    @property
    def key(self) -> str:
        return self.path

    def load(self) -> Image.Image:
        return load_image(self.path)


class SyntheticWorldSource(Source):
    """Args:
    world: the world definition (vocabulary, held-out combinations, seed).
    num_train / num_val / num_test: scenes per split (one caption each).
    image_size: rendered image side in pixels; None = 48 (train.py fills in the model's input size instead, so
        images are drawn at the resolution the model reads).
    test_heldout_fraction: fraction of test scenes forced to contain a held-out composition.
    scene_offset: first scene index; a different offset gives disjoint scenes of the same world (the gate scorers
        are trained at offset 1,000,000 so they never see the scenes they later judge).
    """

    def __init__(
        self,
        world: World | None = None,
        *,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int = 1000,
        image_size: int | None = 48,
        test_heldout_fraction: float = 0.5,
        scene_offset: int = 0,
    ) -> None:
        self.world = world or World()
        if scene_offset < 0:
            raise ValueError(f"scene_offset must be >= 0, got {scene_offset}")
        self.scene_offset = scene_offset
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        for split, n in self.sizes.items():
            if n < 0:
                raise ValueError(f"num_{split} must be >= 0, got {n}")
        if not 0.0 <= test_heldout_fraction <= 1.0:
            raise ValueError(f"test_heldout_fraction must be in [0, 1], got {test_heldout_fraction}")
        self.image_size = 48 if image_size is None else image_size
        if self.image_size < 8:
            raise ValueError(f"data.source.image_size must be >= 8 pixels, got {image_size}")
        self.test_heldout_fraction = test_heldout_fraction

    def scene(self, split: str, i: int) -> tuple[Scene, random.Random]:
        rng = random.Random(f"world-{self.world.seed}-{split}-{i + self.scene_offset}")
        heldout_ok = split == "test"
        force = heldout_ok and rng.random() < self.test_heldout_fraction
        # Half of the forced test scenes get a held-out colour-shape pair, the other half a held-out relation.
        force_pair = force and rng.random() < 0.5
        return self.world.sample_scene(rng, heldout_ok=heldout_ok, force_heldout=force_pair), rng

    def make_record(self, split: str, i: int) -> Record:
        scene, rng = self.scene(split, i)
        heldout_ok = split == "test"
        claim = None
        if heldout_ok and len(scene.objects) >= 2 and rng.random() < self.test_heldout_fraction:
            claim = relation_claim(scene, rng, self.world, heldout_ok=True, prefer_heldout=True)
        if claim is None:
            claim = caption_claim(scene, rng, self.world, heldout_ok=heldout_ok)
        heldout = self.world.contains_heldout_pair(scene) or mentions_heldout(claim, self.world)
        return Record(
            id=f"synthetic-{split}-{i + self.scene_offset:06d}",
            image=SceneImage(scene, self.image_size),
            caption=claim.text(),
            source="pair",
            provenance=[{"stage": "synthetic_world", "model": f"world-seed-{self.world.seed}"}],
            meta={
                "split": split,
                "index": i + self.scene_offset,
                "claim_kind": type(claim).__name__.lower(),
                "heldout": heldout,
            },
        )

    @cache  # noqa: B019 - one source object per run; records are immutable once made
    def records(self, split: str) -> list[Record]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {SPLITS}")
        return [self.make_record(split, i) for i in range(self.sizes[split])]

    @property
    def vocabulary(self) -> dict[str, list[str]]:
        """The world's closed vocabulary: rule-based negatives draw replacement words from it."""
        return {"colors": list(COLORS), "sizes": list(SIZES), "objects": list(SHAPES)}

    def leaks(self, text: str) -> bool:
        """True if `text` names a held-out composition (negative generators must not show it in training)."""
        claim = parse_claim(text)
        if claim is not None:
            return mentions_heldout(claim, self.world)
        low = text.lower()
        return any(f"{c} {s}" in low for c, s in self.world.heldout_pairs)

    def describe(self) -> dict:
        return {
            "type": "synthetic",
            "world_seed": self.world.seed,
            "scene_offset": self.scene_offset,
            **self.sizes,
        }


def world_from_run_config(run_cfg: dict | None) -> tuple[World | None, int | None]:
    """The synthetic world (and image size) a run trained on, rebuilt from its saved config read as data (never
    instantiated): `data.source.world`, or the raw source's world for `data=preprocessed`. (None, None) when the
    run did not train on the synthetic world."""
    src = ((run_cfg or {}).get("data") or {}).get("source") or {}
    if "world" not in src:  # a preprocessed source: the world of its raw source
        src = (src.get("preprocess") or {}).get("raw") or {}
    if "world" not in src:
        return None, None
    params = {k: v for k, v in (src.get("world") or {}).items() if not k.startswith("_")}
    return World(**params), src.get("image_size")
