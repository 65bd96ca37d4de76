"""Symbolic backends for the synthetic world, with the interfaces of the real ones:

- `SceneCaptioner` stands in for the VLM: it describes the scene graph with the world's grammar, and with
  probability `error_rate` gets one attribute wrong (so the gate and the repair loop have real work to do);
- `RendererT2I` stands in for the text-to-image model: it parses the caption and renders a scene that satisfies it.
"""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image

from datamodules.records import Record
from datamodules.sources.synthetic import SceneImage
from datamodules.world.claims import (
    Count,
    Exists,
    Negation,
    Relation,
    caption_claim,
    claim_descs,
    holds,
    overlaps,
    parse_claim,
    random_object,
)
from datamodules.world.scene import COLORS, Obj, Scene, World


class SceneCaptioner:
    """Args: world; error_rate: probability that a caption names one wrong colour."""

    def __init__(self, world: World | None = None, error_rate: float = 0.1) -> None:
        if not 0 <= error_rate <= 1:
            raise ValueError(f"captioner.error_rate must be in [0, 1], got {error_rate}")
        self.world = world or World()
        self.error_rate = error_rate

    def identity(self) -> dict:
        return {"backend": "scene_captioner", "error_rate": self.error_rate, "world": self.world.seed}

    def _scene(self, record: Record) -> Scene:
        scene = getattr(record.image, "scene", None)
        if scene is None:
            raise ValueError(f"scene captioner needs synthetic-world images; record {record.id} has none")
        return scene

    def describe(self, record: Record, rng: random.Random) -> str:
        scene = self._scene(record)
        claim = caption_claim(scene, rng, self.world, heldout_ok=False)
        text = claim.text()
        if rng.random() < self.error_rate:
            words = text.split()
            idx = [i for i, w in enumerate(words) if w in COLORS]
            if idx:
                i = rng.choice(idx)
                words[i] = rng.choice([c for c in COLORS if c != words[i]])
                text = " ".join(words)
        return text

    def caption(self, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list[str]:
        return [self.describe(r, random.Random(s)) for r, s in zip(records, seeds)]

    # The VLM's repair prompt sees the current caption too; the symbolic captioner simply re-describes the scene
    # (with the same error rate, so a repair can be wrong and fail the gate again).
    def repair(self, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list[str]:
        return self.caption(images, records, seeds)


def scene_for_claim(claim, world: World, rng: random.Random, tries: int = 300) -> Scene | None:
    """A random scene (1–4 objects) in which `claim` holds."""
    descs = list(claim_descs(claim))
    for _ in range(tries):
        objs: list[Obj] = []
        wanted = descs[:1] if isinstance(claim, Negation) else descs
        if isinstance(claim, Count):
            wanted = [claim.desc] * claim.n
        for d in wanted:
            o = random_object(d, rng)
            if overlaps(o, objs):
                break
            objs.append(o)
        else:
            scene = Scene(tuple(objs))
            if holds(claim, scene, world.relation_margin):
                return scene
    return None


class RendererT2I:
    """Args: world; image_size. Returns a `SceneImage` (an ImageRef carrying its scene graph), so the symbolic
    captioner can later look at a generated image too. Cheap and exact: not cached."""

    cacheable = False

    def __init__(self, world: World | None = None, image_size: int = 48) -> None:
        self.world = world or World()
        self.image_size = image_size

    def identity(self) -> dict:
        return {"backend": "renderer_t2i", "size": self.image_size, "world": self.world.seed}

    def generate_one(self, caption: str, rng: random.Random):
        claim = parse_claim(caption)
        if claim is None:
            return None
        scene = scene_for_claim(claim, self.world, rng)
        return None if scene is None else SceneImage(scene, self.image_size)

    def generate(self, captions: list[str], seeds: list[int]) -> list:
        return [self.generate_one(c, random.Random(s)) for c, s in zip(captions, seeds)]


__all__ = ["Count", "Exists", "Relation", "RendererT2I", "SceneCaptioner", "replace", "scene_for_claim"]
