"""ARO (Yuksekgonul et al., 2023) VG-Relation and VG-Attribution: the Visual Genome image cropped to the union
bounding box, two captions (false, true); correct iff the true caption scores strictly higher (chance 50%).

Official aggregation: VG-Relation macro accuracy over relations, dropping the symmetric/ambiguous relations listed
in the official notebook; VG-Attribution macro accuracy over attribute pairs with at least 25 items. Micro accuracy
over all items is reported beside them.

Layout: `<root>/visual_genome_relation.json`, `<root>/visual_genome_attribution.json`, `<root>/images/<image_path>`;
each item has image_path, bbox_x, bbox_y, bbox_w, bbox_h, true_caption, false_caption and relation_name (VG-R) or
attributes [a, b] (VG-A).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Literal

from PIL import Image

from datamodules.benchmarks.base import Benchmark, BenchmarkResult, option_scores, require, thumbnail
from lightning_modules.inference import ClipScorer

HOW = "annotation JSONs and vgr_vga_images.zip from github.com/mertyg/vision-language-models-are-bows (dataset_zoo)"
FILES = {"relation": "visual_genome_relation.json", "attribution": "visual_genome_attribution.json"}
MIN_ATTRIBUTE_COUNT = 25
# Relations excluded from the VG-Relation macro accuracy (official ARO notebook: symmetric or ambiguous).
SYMMETRIC_RELATIONS = frozenset(
    """adjusting|attached to|between|bigger than|biting|boarding|brushing|chewing|cleaning|climbing|close to|coming from|
coming out of|contain|crossing|dragging|draped over|drinking|drinking from|driving|driving down|driving on|eating from|
eating in|enclosing|exiting|facing|filled with|floating in|floating on|flying|flying above|flying in|flying over|
flying through|full of|going down|going into|going through|grazing in|growing in|growing on|guiding|hanging from|
hanging in|hanging off|hanging over|higher than|holding onto|hugging|in between|jumping off|jumping on|jumping over|
kept in|larger than|leading|leaning over|leaving|licking|longer than|looking in|looking into|looking out|looking over|
looking through|lying next to|lying on top of|making|mixed with|mounted on|moving|on the back of|on the edge of|
on the front of|on the other side of|opening|painted on|parked at|parked beside|parked by|parked in|parked in front of|
parked near|parked next to|perched on|petting|piled on|playing|playing in|playing on|playing with|pouring|reaching for|
reading|reflected on|riding on|running in|running on|running through|seen through|sitting behind|sitting beside|
sitting by|sitting in front of|sitting near|sitting next to|sitting under|skiing down|skiing on|sleeping in|sleeping on|
smiling at|sniffing|splashing|sprinkled on|stacked on|standing against|standing around|standing behind|standing beside|
standing in front of|standing near|standing next to|staring at|stuck in|surrounding|swimming in|swinging|talking to|
topped with|touching|traveling down|traveling on|tying|typing on|underneath|wading in|waiting for|walking across|
walking by|walking down|walking next to|walking through|working in|working on|worn on|wrapped around|wrapped in|by|of|
near|next to|with|beside|on the side of|around""".replace("\n", "").split("|")
)


def crop_loader(root):
    def load(ref):
        path, x, y, w, h = ref
        with Image.open(root / "images" / path) as im:
            return im.convert("RGB").crop((x, y, x + w, y + h))

    return load


class AroVG(Benchmark):
    """Args: root: the ARO folder; task: relation | attribution; max_items: cap (None = all)."""

    def __init__(
        self,
        root: str,
        task: Literal["relation", "attribution"] = "relation",
        *,
        max_items: int | None = None,
        max_failures: int = 30,
    ) -> None:
        if task not in FILES:
            raise ValueError(f"aro.task must be relation or attribution, got {task!r}")
        self.root, self.task, self.max_items, self.max_failures = root, task, max_items, max_failures
        self.name = f"aro_vg_{task}"

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        layout = f"<root>/{FILES[self.task]} and <root>/images/<image_path>"
        root = require(self.name, self.root, layout, HOW)
        items = json.loads(require(self.name, root / FILES[self.task], layout, HOW).read_text())[
            : self.max_items
        ]
        refs = [(it["image_path"], it["bbox_x"], it["bbox_y"], it["bbox_w"], it["bbox_h"]) for it in items]
        load = crop_loader(root)
        scores = option_scores(
            scorer, refs, load, [[it["false_caption"], it["true_caption"]] for it in items]
        )
        correct = [
            bool(s[1] > s[0]) for s in scores
        ]  # argmax over (false, true): ties go to the false caption
        groups: dict[str, list[bool]] = defaultdict(list)
        for it, ok in zip(items, correct):
            key = (
                it["relation_name"]
                if self.task == "relation"
                else f"{it['attributes'][0]}_{it['attributes'][1]}"
            )
            groups[key].append(ok)
        if self.task == "relation":
            kept = {k: v for k, v in groups.items() if k not in SYMMETRIC_RELATIONS}
        else:
            kept = {k: v for k, v in groups.items() if len(v) >= MIN_ATTRIBUTE_COUNT}
        metrics = {"micro/acc": 100.0 * sum(correct) / max(len(correct), 1)}
        if kept:
            metrics["macro/acc"] = 100.0 * sum(sum(v) / len(v) for v in kept.values()) / len(kept)
        counts = {"micro": len(correct), "macro": len(kept)}
        failures = [
            {
                "subset": self.task,
                "positive": it["true_caption"],
                "negative": it["false_caption"],
                "score_pos": float(s[1]),
                "score_neg": float(s[0]),
                "image": thumbnail(load(ref)),
            }
            for it, ref, s, ok in zip(items, refs, scores, correct)
            if not ok
        ][: self.max_failures]
        return BenchmarkResult(metrics, {k: 50.0 for k in metrics}, counts, failures)
