"""The synthetic world's editor: parses the target caption back into a claim, searches the smallest scene-graph
edit (recolour / reshape / resize an object, swap two objects' attributes or positions, mirror an object, remove
one, add one) that makes the target true and the source false, and re-renders the scene. Exact and cheap."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from PIL import Image

from datamodules.negatives.editors.base import ImageEditor
from datamodules.records import Record
from datamodules.world.claims import Count, Negation, claim_descs, holds, parse_claim, random_object
from datamodules.world.render import render_scene
from datamodules.world.scene import COLORS, SHAPES, SIZES, Obj, Scene, World, swap_attribute


def _free(objs: list[Obj] | tuple[Obj, ...], o: Obj, skip: int | None = None) -> bool:
    return (
        all(
            (o.x - p.x) ** 2 + (o.y - p.y) ** 2 > (o.radius + p.radius + 0.02) ** 2
            for k, p in enumerate(objs)
            if k != skip
        )
        and o.radius <= o.x <= 1 - o.radius
        and o.radius <= o.y <= 1 - o.radius
    )


def candidate_edits(scene: Scene, target, rng: random.Random):
    """Yields edited scenes, smallest edits first (each tier shuffled by `rng`)."""
    objs = scene.objects
    tier1 = []
    for i, o in enumerate(objs):
        for attr, vocab in (("color", COLORS), ("shape", SHAPES), ("size", SIZES)):
            for v in vocab:
                if v != getattr(o, attr):
                    new = replace(o, **{attr: v})
                    if attr != "size" or _free(objs, new, skip=i):
                        tier1.append(Scene(objs[:i] + (new,) + objs[i + 1 :]))
        for mirrored in (replace(o, x=round(1 - o.x, 4)), replace(o, y=round(1 - o.y, 4))):
            if _free(objs, mirrored, skip=i):
                tier1.append(Scene(objs[:i] + (mirrored,) + objs[i + 1 :]))
    for i, j in itertools.combinations(range(len(objs)), 2):
        for attr in ("color", "size", "shape"):
            tier1.append(swap_attribute(scene, i, j, attr))
        tier1.append(swap_attribute(swap_attribute(scene, i, j, "x"), i, j, "y"))
    rng.shuffle(tier1)
    yield from tier1
    tier2 = [Scene(objs[:i] + objs[i + 1 :]) for i in range(len(objs))] if len(objs) > 1 else []
    rng.shuffle(tier2)
    yield from tier2
    if len(objs) < 4:
        wanted = [d for d in claim_descs(target)] if isinstance(target, (Count, Negation)) else []
        for d in wanted:
            for _ in range(30):
                o = random_object(d, rng)
                if _free(objs, o):
                    yield Scene(objs + (o,))
                    break


def edit_scene(
    scene: Scene, source_caption: str, target_caption: str, world: World, rng: random.Random
) -> Scene | None:
    target, source = parse_claim(target_caption), parse_claim(source_caption)
    if target is None:
        return None
    m = world.relation_margin
    for cand in candidate_edits(scene, target, rng):
        if holds(target, cand, m) and (source is None or not holds(source, cand, m)):
            return cand
    return None


class RendererEditor(ImageEditor):
    """Args: world: the world definition (relation margin); None = defaults. Needs records of the synthetic world."""

    expensive = False

    def __init__(self, world: World | None = None) -> None:
        self.world = world or World()

    def edit(
        self, image: Image.Image, record: Record, source_caption: str, target_caption: str, rng: random.Random
    ):
        scene = getattr(record.image, "scene", None)
        if scene is None:
            raise ValueError(
                f"renderer editor needs synthetic-world records (scene graphs); record {record.id} has none — "
                "use the diffusers editor for real images"
            )
        edited = edit_scene(scene, source_caption, target_caption, self.world, rng)
        return None if edited is None else render_scene(edited, image.size[0])

    def identity(self) -> dict:
        return {"editor": "renderer", "margin": self.world.relation_margin}
