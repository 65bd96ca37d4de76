"""Image-text retrieval on COCO 5k / Flickr30k 1k Karpathy test: R@1/5/10 in both directions. Image→text is a hit
if any of the image's captions ranks in the top K (torchmetrics `RetrievalHitRate` semantics, not
`RetrievalRecall`); computed chunk-wise from features, so 5k × 25k runs in bounded memory.

Layout (either): the BLIP-style Karpathy test JSON — a list of {"image": "<relative path>", "caption": [...]} — or
Karpathy's `dataset_coco.json` / `dataset_flickr30k.json` ({"images": [{"filepath", "filename", "split",
"sentences": [{"raw"}]}]}, the `split` entries kept); images under `image_root`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from datamodules.benchmarks.base import Benchmark, BenchmarkResult, require
from datamodules.records import load_image
from lightning_modules.inference import ClipScorer
from lightning_modules.metrics import retrieval_recall

HOW = (
    "Karpathy-split annotations (coco_karpathy_test.json or dataset_coco.json) and the COCO/Flickr30k images"
)


def read_annotations(path: Path, split: str) -> list[tuple[str, list[str]]]:
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "images" in data:
        return [
            (str(Path(im.get("filepath", "")) / im["filename"]), [s["raw"] for s in im["sentences"]])
            for im in data["images"]
            if im.get("split") == split
        ]
    return [
        (it["image"], it["caption"] if isinstance(it["caption"], list) else [it["caption"]]) for it in data
    ]


class Retrieval(Benchmark):
    """Args: annotation, image_root, name (retrieval_coco | retrieval_flickr), split (Karpathy format),
    chunk: similarity rows per chunk, max_images: cap."""

    def __init__(
        self,
        annotation: str,
        image_root: str,
        *,
        name: str = "retrieval_coco",
        split: str = "test",
        chunk: int = 1024,
        max_images: int | None = None,
    ) -> None:
        self.annotation, self.image_root, self.name = annotation, image_root, name
        self.split, self.chunk, self.max_images = split, chunk, max_images

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        layout = "a Karpathy-split JSON and <image_root>/<image path>"
        ann = read_annotations(require(self.name, self.annotation, layout, HOW), self.split)[
            : self.max_images
        ]
        root = require(self.name, self.image_root, layout, HOW)
        img = scorer.encode_lazy([str(root / p) for p, _ in ann], load_image)
        texts = [c for _, caps in ann for c in caps]
        txt = scorer.encode_texts(texts)
        txt_img = torch.tensor([i for i, (_, caps) in enumerate(ann) for _ in caps])
        res = retrieval_recall(img, txt, txt_img, ks=(1, 5, 10), chunk=self.chunk)
        n_img, n_txt = len(ann), len(texts)
        per = n_txt / max(n_img, 1)
        metrics, chance = {}, {}
        for k in (1, 5, 10):
            metrics[f"i2t/r{k}"], chance[f"i2t/r{k}"] = res[f"i2t_r{k}"], 100.0 * min(1.0, k * per / n_txt)
            metrics[f"t2i/r{k}"], chance[f"t2i/r{k}"] = res[f"t2i_r{k}"], 100.0 * min(1.0, k / n_img)
        metrics["mean/r"] = res["r_mean"]
        chance["mean/r"] = sum(chance.values()) / len(chance)
        return BenchmarkResult(metrics, chance, {"i2t": n_img, "t2i": n_txt})
