"""SugarCrepe (Hsieh et al., 2023): one COCO val2017 image, its caption and one hard-negative caption; correct iff
the positive scores strictly higher. Chance 50%.

Layout (the official release): `<root>/{add_att,add_obj,replace_att,replace_obj,replace_rel,swap_att,swap_obj}.json`,
each `{id: {"filename": "000000391895.jpg", "caption": ..., "negative_caption": ...}}` (ids need not be contiguous),
and the COCO val2017 images in `image_dir`. Reports each subset, the 7-subset macro mean and the category micro means
(add / replace / swap) as in the paper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamodules.benchmarks.base import Benchmark, BenchmarkResult, option_scores, require, thumbnail
from datamodules.records import load_image
from lightning_modules.inference import ClipScorer

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
HOW = (
    "the JSON files from github.com/RAIVNLab/sugar-crepe (data/), images from COCO val2017 (cocodataset.org)"
)


class SugarCrepe(Benchmark):
    """Args: root: folder with the 7 JSON files; image_dir: COCO val2017 folder; subsets: which to run;
    max_items: per subset (None = all); max_failures: failure cases kept for the report."""

    name = "sugarcrepe"

    def __init__(
        self,
        root: str,
        image_dir: str,
        *,
        subsets: list[str] | tuple[str, ...] = SUBSETS,
        max_items: int | None = None,
        max_failures: int = 30,
    ) -> None:
        unknown = set(subsets) - set(SUBSETS)
        if unknown:
            raise ValueError(f"sugarcrepe.subsets: unknown {sorted(unknown)}; valid: {list(SUBSETS)}")
        self.root, self.image_dir = root, image_dir
        self.subsets, self.max_items, self.max_failures = list(subsets), max_items, max_failures

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        layout = "<root>/{" + ",".join(self.subsets) + "}.json and <image_dir>/<filename>.jpg"
        root = require(self.name, self.root, layout, HOW)
        image_dir = require(self.name, self.image_dir, layout, HOW)
        metrics, chance, counts, failures = {}, {}, {}, []
        per_cat: dict[str, list[bool]] = {}
        for subset in self.subsets:
            path = require(self.name, root / f"{subset}.json", layout, HOW)
            items = list(json.loads(Path(path).read_text()).values())[: self.max_items]
            refs = [str(image_dir / it["filename"]) for it in items]
            scores = option_scores(
                scorer, refs, load_image, [[it["caption"], it["negative_caption"]] for it in items]
            )
            correct = [bool(s[0] > s[1]) for s in scores]
            metrics[f"{subset}/acc"] = 100.0 * sum(correct) / len(correct)
            chance[f"{subset}/acc"], counts[subset] = 50.0, len(correct)
            per_cat.setdefault(subset.split("_")[0], []).extend(correct)
            for it, ref, s, ok in zip(items, refs, scores, correct):
                if (
                    not ok
                    and sum(f["subset"] == subset for f in failures)
                    < self.max_failures // len(self.subsets) + 1
                ):
                    failures.append(
                        {
                            "subset": subset,
                            "positive": it["caption"],
                            "negative": it["negative_caption"],
                            "score_pos": float(s[0]),
                            "score_neg": float(s[1]),
                            "image": thumbnail(load_image(ref)),
                        }
                    )
        for cat, oks in per_cat.items():
            metrics[f"{cat}/acc"], chance[f"{cat}/acc"], counts[cat] = (
                100.0 * sum(oks) / len(oks),
                50.0,
                len(oks),
            )
        metrics["mean/acc"] = sum(metrics[f"{s}/acc"] for s in self.subsets) / len(self.subsets)
        chance["mean/acc"] = 50.0
        return BenchmarkResult(metrics, chance, counts, failures)
