"""Winoground (Thrush et al., 2022): 400 items of two images and two captions with the same words in a different
order. Text score: both images pick their own caption; image score: both captions pick their own image; group:
both. Chance 25 / 25 / 16.67%.

Layout (either): the original release `<root>/examples.jsonl` (id, image_0, image_1, caption_0, caption_1, tag,
secondary_tag, ...) with `<root>/images/<image_0>.png`; or a `datasets.save_to_disk` folder of the HF dataset
(columns image_0, image_1 as images, caption_0, caption_1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from datamodules.benchmarks.base import (
    Benchmark,
    BenchmarkResult,
    MissingData,
    require,
    side_by_side,
    thumbnail,
)
from lightning_modules.inference import ClipScorer

HOW = (
    "the gated dataset facebook/winoground (accept its terms on the HF hub, download once, keep a local copy)"
)

LAYOUT = "<root>/examples.jsonl + <root>/images/<image_id>.png, or a datasets.save_to_disk folder"


def load_items(root: Path) -> list[dict]:
    if (root / "examples.jsonl").is_file():
        items = [json.loads(x) for x in (root / "examples.jsonl").read_text().splitlines() if x.strip()]

        def img(name: str) -> Image.Image:
            for ext in (".png", ".jpg", ""):
                p = root / "images" / f"{name}{ext}"
                if p.is_file():
                    with Image.open(p) as im:
                        return im.convert("RGB")
            raise MissingData("winoground", root / "images" / f"{name}.png", LAYOUT, HOW)

        return [{**it, "load_0": (img, it["image_0"]), "load_1": (img, it["image_1"])} for it in items]
    if (
        (root / "dataset_info.json").is_file()
        or (root / "state.json").is_file()
        or (root / "dataset_dict.json").is_file()
    ):
        import datasets

        ds = datasets.load_from_disk(str(root))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["test"]
        return [
            {
                "id": i,
                "caption_0": r["caption_0"],
                "caption_1": r["caption_1"],
                "tag": r.get("tag", ""),
                "load_0": (lambda x: x.convert("RGB"), r["image_0"]),
                "load_1": (lambda x: x.convert("RGB"), r["image_1"]),
            }
            for i, r in enumerate(ds)
        ]
    raise MissingData("winoground", root / "examples.jsonl", LAYOUT, HOW)


def winoground_scores(s_NCI: torch.Tensor) -> dict[str, torch.Tensor]:
    """s[n, caption, image] -> per-item text / image / group correctness."""
    text = (s_NCI[:, 0, 0] > s_NCI[:, 1, 0]) & (s_NCI[:, 1, 1] > s_NCI[:, 0, 1])
    image = (s_NCI[:, 0, 0] > s_NCI[:, 0, 1]) & (s_NCI[:, 1, 1] > s_NCI[:, 1, 0])
    return {"text": text, "image": image, "group": text & image}


class Winoground(Benchmark):
    name = "winoground"

    def __init__(self, root: str, *, max_items: int | None = None, max_failures: int = 30) -> None:
        self.root, self.max_items, self.max_failures = root, max_items, max_failures

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        items = load_items(require(self.name, self.root, LAYOUT, HOW))[: self.max_items]
        refs = [it[f"load_{k}"] for it in items for k in (0, 1)]
        img = scorer.encode_lazy(refs, lambda r: r[0](r[1])).view(len(items), 2, -1)
        txt = scorer.encode_texts([it[f"caption_{k}"] for it in items for k in (0, 1)]).view(
            len(items), 2, -1
        )
        s = torch.einsum("nid,ncd->nci", img, txt)
        ok = winoground_scores(s)
        metrics, chance, counts = {}, {}, {}
        tags = sorted({it.get("tag", "") for it in items} - {""})
        for sub in ["all", *tags]:
            mask = torch.tensor([sub == "all" or it.get("tag") == sub for it in items])
            for m, ch in (("text", 25.0), ("image", 25.0), ("group", 100 / 6)):
                metrics[f"{sub}/{m}"] = 100.0 * ok[m][mask].float().mean().item()
                chance[f"{sub}/{m}"] = ch
            counts[sub] = int(mask.sum())
        failures = []
        # Failed groups as 2x2 cases (both images, both captions, the four scores), worst margin first: how far the
        # best wrong pairing beats the right one.
        margin = (
            torch.stack(
                [
                    s[:, 1, 0] - s[:, 0, 0],
                    s[:, 0, 1] - s[:, 0, 0],
                    s[:, 0, 1] - s[:, 1, 1],
                    s[:, 1, 0] - s[:, 1, 1],
                ]
            )
            .max(0)
            .values
        )
        failed = sorted((~ok["group"]).nonzero().flatten().tolist(), key=lambda n: -float(margin[n]))
        for n in failed[: self.max_failures]:
            it = items[n]
            images = [thumbnail(it[f"load_{i}"][0](it[f"load_{i}"][1]), 160) for i in (0, 1)]
            failures.append(
                {
                    "subset": it.get("tag", "all"),
                    "captions": [it["caption_0"], it["caption_1"]],
                    "images": images,
                    "scores": s[n].tolist(),
                    "margin": float(margin[n]),
                    "image": side_by_side(images),
                }
            )
        return BenchmarkResult(metrics, chance, counts, failures)
