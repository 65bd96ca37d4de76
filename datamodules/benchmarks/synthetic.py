"""The synthetic-world benchmark: SugarCrepe-style positive-vs-negative caption choice per category (chance 50%)
and Winoground-style 2 images × 2 captions (text / image / group; chance 25 / 25 / 16.67%), on test-split scenes.

Every positive caption is verified true and every negative verified false against the scene graph. Items that
involve a held-out composition are also reported on their own (`<category>-heldout`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from typing import Any

import torch

from datamodules.benchmarks.base import Benchmark, BenchmarkResult, side_by_side
from datamodules.benchmarks.winoground import winoground_scores
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world.claims import (
    CATEGORIES,
    Desc,
    Relation,
    holds,
    mentions_heldout,
    negative_claim,
    positive_for_category,
    relation_claim,
)
from datamodules.world.render import render_scene
from datamodules.world.scene import Scene, World, swap_attribute
from lightning_modules.inference import ClipScorer

WINOGROUND_KINDS = ("swap_attributes", "swap_objects")


class SyntheticBenchmark(Benchmark):
    """Args:
    world: the world definition; None = the world the run was trained on, passed by the caller as
        `context["world"]` (the training source's world; evaluate.py rebuilds it from the checkpoint's config), else
        the default world.
    image_size: render size; None = `context["image_size"]` (else 48).
    num_items: items per SugarCrepe-style category.
    num_winoground: items per Winoground-style kind.
    max_scenes: test scenes scanned at most.
    seed: item sampling seed.
    max_failures: failure cases kept for the report.
    """

    name = "synthetic"

    def __init__(
        self,
        world: World | None = None,
        *,
        image_size: int | None = None,
        num_items: int = 300,
        num_winoground: int = 150,
        max_scenes: int = 20000,
        seed: int = 0,
        max_failures: int = 50,
        categories: tuple[str, ...] | list[str] = CATEGORIES,
    ) -> None:
        unknown = set(categories) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"benchmark.categories: unknown {sorted(unknown)}; valid: {list(CATEGORIES)}")
        self.world = world
        self.image_size = image_size
        self.num_items = num_items
        self.num_winoground = num_winoground
        self.max_scenes = max_scenes
        self.seed = seed
        self.max_failures = max_failures
        self.categories = tuple(categories)

    # -- items ------------------------------------------------------------------------------------------------
    def items(self, world: World) -> tuple[list[dict], list[dict]]:
        source = SyntheticWorldSource(world, num_train=0, num_val=0, num_test=self.max_scenes)
        rng = random.Random(f"synthetic-benchmark-{self.seed}")
        crepe: list[dict] = []
        wino: list[dict] = []
        per_cat: dict[str, int] = defaultdict(int)
        per_kind: dict[str, int] = defaultdict(int)
        m = world.relation_margin
        for i in range(self.max_scenes):
            if all(per_cat[c] >= self.num_items for c in self.categories) and all(
                per_kind[k] >= self.num_winoground for k in WINOGROUND_KINDS
            ):
                break
            scene, _ = source.scene("test", i)
            for cat in self.categories:
                if per_cat[cat] >= self.num_items:
                    continue
                pos = positive_for_category(cat, scene, rng, world, prefer_heldout=per_cat[cat] % 2 == 0)
                if pos is None:
                    continue
                neg = negative_claim(pos, cat, scene, rng, m)
                if neg is None:
                    continue
                assert holds(pos, scene, m) and not holds(neg, scene, m)
                heldout = mentions_heldout(pos, world) or mentions_heldout(neg, world)
                crepe.append(
                    {
                        "category": cat,
                        "scene": scene,
                        "pos": pos.text(),
                        "neg": neg.text(),
                        "heldout": heldout,
                    }
                )
                per_cat[cat] += 1
            for kind in WINOGROUND_KINDS:
                if per_kind[kind] < self.num_winoground and len(scene.objects) >= 2:
                    item = self._winoground_item(kind, scene, rng, world)
                    if item is not None:
                        wino.append(item)
                        per_kind[kind] += 1
        return crepe, wino

    @staticmethod
    def _winoground_item(kind: str, scene: Scene, rng: random.Random, world: World) -> dict | None:
        m = world.relation_margin
        c0 = relation_claim(scene, rng, world, heldout_ok=True)
        if c0 is None:
            return None
        objs = scene.objects
        i = next(k for k, o in enumerate(objs) if Desc.of(o) == c0.a)
        j = next(k for k, o in enumerate(objs) if Desc.of(o) == c0.b and k != i)
        if kind == "swap_attributes":
            if objs[i].color == objs[j].color:
                return None
            scene1 = swap_attribute(scene, i, j, "color")
            c1 = Relation(replace(c0.a, color=c0.b.color), c0.rel, replace(c0.b, color=c0.a.color))
        else:
            scene1 = swap_attribute(swap_attribute(scene, i, j, "x"), i, j, "y")
            c1 = Relation(c0.b, c0.rel, c0.a)
        ok = (
            holds(c0, scene, m)
            and holds(c1, scene1, m)
            and not holds(c0, scene1, m)
            and not holds(c1, scene, m)
        )
        if not ok:
            return None
        return {"kind": kind, "scenes": (scene, scene1), "captions": (c0.text(), c1.text())}

    # -- scoring ----------------------------------------------------------------------------------------------
    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        context = context or {}
        world = self.world or context.get("world") or World()
        size = self.image_size or context.get("image_size") or 48
        crepe, wino = self.items(world)
        result = BenchmarkResult(metrics={}, chance={}, counts={}, failures=[])
        if crepe:
            self._score_choices(crepe, scorer, size, result)
        if wino:
            self._score_winoground(wino, scorer, size, result)
        return result

    def _score_choices(self, crepe: list[dict], scorer: ClipScorer, size: int, out: BenchmarkResult) -> None:
        """SugarCrepe-style items: the positive caption must outscore the negative on the scene's image."""
        img = scorer.encode_images([render_scene(it["scene"], size) for it in crepe])
        s_pos = (img * scorer.encode_texts([it["pos"] for it in crepe])).sum(-1)
        s_neg = (img * scorer.encode_texts([it["neg"] for it in crepe])).sum(-1)
        groups: dict[str, list[bool]] = defaultdict(list)
        wrong: dict[str, list[tuple[float, dict, float, float]]] = defaultdict(list)
        for it, ok, sp, sn in zip(crepe, (s_pos > s_neg).tolist(), s_pos.tolist(), s_neg.tolist()):
            groups[it["category"]].append(ok)
            if it["heldout"]:
                groups[it["category"] + "-heldout"].append(ok)
            if not ok:
                wrong[it["category"]].append((sn - sp, it, sp, sn))
        # Failure cases: the most confidently wrong of each category (not the first in item order), images
        # rendered only for those kept.
        per_cat = self.max_failures // max(len(wrong), 1) + 1
        kept = sorted(
            (w for ws in wrong.values() for w in sorted(ws, key=lambda w: -w[0])[:per_cat]),
            key=lambda w: -w[0],
        )[: self.max_failures]
        for margin, it, sp, sn in kept:
            out.failures.append(
                {
                    "subset": it["category"],
                    "heldout": bool(it["heldout"]),
                    "positive": it["pos"],
                    "negative": it["neg"],
                    "score_pos": sp,
                    "score_neg": sn,
                    "margin": margin,
                    "image": render_scene(it["scene"], max(size, 96)),
                }
            )
        order = [c for c in self.categories if c in groups] + [
            f"{c}-heldout" for c in self.categories if f"{c}-heldout" in groups
        ]
        for g in order:
            out.metrics[f"{g}/acc"] = 100.0 * sum(groups[g]) / len(groups[g])
            out.chance[f"{g}/acc"] = 50.0
            out.counts[g] = len(groups[g])
        main = [out.metrics[f"{c}/acc"] for c in self.categories if f"{c}/acc" in out.metrics]
        held = [out.metrics[f"{c}-heldout/acc"] for c in self.categories if f"{c}-heldout/acc" in out.metrics]
        out.metrics["mean/acc"], out.chance["mean/acc"] = sum(main) / len(main), 50.0
        if held:
            out.metrics["heldout_mean/acc"], out.chance["heldout_mean/acc"] = sum(held) / len(held), 50.0

    def _score_winoground(
        self, wino: list[dict], scorer: ClipScorer, size: int, out: BenchmarkResult
    ) -> None:
        """Winoground-style items (2 scenes x 2 captions), scored exactly as the Winoground benchmark."""
        images = [render_scene(s, size) for it in wino for s in it["scenes"]]
        img = scorer.encode_images(images).view(len(wino), 2, -1)
        txt = scorer.encode_texts([c for it in wino for c in it["captions"]]).view(len(wino), 2, -1)
        ok = winoground_scores(torch.einsum("nid,ncd->nci", img, txt))  # s[n, caption, image]
        kinds = [it["kind"] for it in wino]
        for sub in (*WINOGROUND_KINDS, "all"):
            mask = torch.tensor([sub in ("all", k) for k in kinds])
            if not mask.any():
                continue
            name = "winoground" if sub == "all" else f"winoground-{sub}"
            for metric, ch in (("text", 25.0), ("image", 25.0), ("group", 100 / 6)):
                out.metrics[f"{name}/{metric}"] = 100.0 * ok[metric][mask].float().mean().item()
                out.chance[f"{name}/{metric}"] = ch
            out.counts[name] = int(mask.sum())
        # Failed groups as 2x2 cases: both scenes, both captions, all four scores (worst group margin first).
        scores = torch.einsum("nid,ncd->nci", img, txt)  # [item, caption, image]
        margin = (
            torch.stack(  # how far the best wrong pairing beats the right one
                [
                    torch.maximum(scores[:, 1, 0] - scores[:, 0, 0], scores[:, 0, 1] - scores[:, 0, 0]),
                    torch.maximum(scores[:, 0, 1] - scores[:, 1, 1], scores[:, 1, 0] - scores[:, 1, 1]),
                ]
            )
            .max(0)
            .values
        )
        failed = (~ok["group"]).nonzero().flatten().tolist()
        for n in sorted(failed, key=lambda n: -float(margin[n]))[: max(self.max_failures // 3, 1)]:
            it = wino[n]
            images = [render_scene(sc, max(size, 96)) for sc in it["scenes"]]
            out.failures.append(
                {
                    "subset": f"winoground-{it['kind']}",
                    "captions": list(it["captions"]),
                    "images": images,
                    "scores": scores[n].tolist(),
                    "margin": float(margin[n]),
                    "image": side_by_side(images),
                }
            )
