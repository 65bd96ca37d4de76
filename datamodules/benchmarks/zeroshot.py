"""Zero-shot classification on an image-folder dataset: one folder per class, class names from the folder names
(underscores → spaces) or a class-names file, prompts from templates averaged per class. Top-1 / top-5 accuracy,
chance 100/C and 500/C percent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
)

from datamodules.benchmarks.base import Benchmark, BenchmarkResult, require
from datamodules.records import load_image
from lightning_modules.inference import ClipScorer


def template_set(name: str) -> list[str]:
    """open_clip's standard prompt sets as '{}' strings: 'openai' (the 80 CLIP ImageNet templates, the protocol of
    published zero-shot numbers) or 'simple' (open_clip's short set)."""
    sets = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
    if name not in sets:
        raise ValueError(f"zeroshot.templates: unknown set {name!r}; use openai, simple or a list of strings")
    return [t("{}") for t in sets[name]]


WNID = re.compile(r"^n\d{8}$")
EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class ZeroShot(Benchmark):
    """Args: root: <root>/<class folder>/<image>; name; classnames_file: one name per line in sorted-folder order
    (default: open_clip's ImageNet class names when the folders are the 1000 ImageNet WordNet ids, else the folder
    names); templates: 'openai' (80, default), 'simple', or a list of prompt templates with {}; max_per_class: cap."""

    def __init__(
        self,
        root: str,
        *,
        name: str = "zeroshot",
        classnames_file: str | None = None,
        templates: str | list[str] = "openai",
        max_per_class: int | None = None,
    ) -> None:
        self.root, self.name, self.classnames_file = root, name, classnames_file
        self.templates = template_set(templates) if isinstance(templates, str) else list(templates)
        if not all("{}" in t for t in self.templates):
            raise ValueError("zeroshot.templates: every template needs a '{}' for the class name")
        self.max_per_class = max_per_class

    def class_names(self, folders: list[str]) -> list[str]:
        """Names for the sorted class folders: the class-names file, open_clip's ImageNet names for the 1000
        ImageNet WordNet-id folders, else the folder names (underscores -> spaces)."""
        if self.classnames_file:
            names = [x.strip() for x in Path(self.classnames_file).read_text().splitlines() if x.strip()]
            if len(names) != len(folders):
                raise ValueError(
                    f"zeroshot.classnames_file has {len(names)} names for {len(folders)} class folders"
                )
            return names
        if len(folders) == len(IMAGENET_CLASSNAMES) and all(WNID.match(f) for f in folders):
            return list(IMAGENET_CLASSNAMES)  # sorted WordNet ids = the standard class order
        return [f.replace("_", " ") for f in folders]

    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        root = require(
            self.name, self.root, "<root>/<class>/<image files>", "any ImageNet-style folder dataset"
        )
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        names = self.class_names([f.name for f in folders])
        paths, labels = [], []
        for c, f in enumerate(folders):
            files = sorted(p for p in f.iterdir() if p.suffix.lower() in EXTS)[: self.max_per_class]
            paths += [str(p) for p in files]
            labels += [c] * len(files)
        classifier = torch.stack(
            [
                F.normalize(scorer.encode_texts([t.format(n) for t in self.templates]).mean(0), dim=-1)
                for n in names
            ]
        )
        img = scorer.encode_lazy(paths, load_image)
        logits = img @ classifier.T
        y = torch.tensor(labels)
        k = min(5, len(names))
        top = logits.topk(k, dim=1).indices
        c = len(names)
        metrics = {
            "all/top1": 100.0 * (top[:, 0] == y).float().mean().item(),
            f"all/top{k}": 100.0 * (top == y[:, None]).any(1).float().mean().item(),
        }
        chance = {"all/top1": 100.0 / c, f"all/top{k}": 100.0 * k / c}
        return BenchmarkResult(metrics, chance, {"all": len(paths)})
