"""Benchmark interface, its result type, the missing-data error and helpers shared by the benchmarks. The scorer
they use lives with the model: `lightning_modules.inference.ClipScorer`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lightning_modules.inference import ClipScorer


@dataclass
class BenchmarkResult:
    """metrics: {"subset/metric": value in %}; chance: same keys -> chance level in %;
    failures: examples the model got wrong (for reports), each a dict of primitives (+ optional PIL images)."""

    metrics: dict[str, float]
    chance: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # e.g. which POS tagger was used


class Benchmark(ABC):
    name: str = "benchmark"

    @abstractmethod
    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        """Scores `scorer`. `context` carries the run config of the checkpoint under evaluation."""


class MissingData(FileNotFoundError):
    """A benchmark's files are not where the config says: the message names the path, the layout, and how to get it."""

    def __init__(self, benchmark: str, path: str | Path, layout: str, how: str) -> None:
        super().__init__(f"{benchmark}: not found: '{path}'. Expected layout: {layout}. How to obtain: {how}")


def require(benchmark: str, path: str | Path | None, layout: str, how: str) -> Path:
    if path is None or not Path(path).exists():
        raise MissingData(benchmark, path, layout, how)
    return Path(path)


def option_scores(
    scorer: ClipScorer,
    refs: Sequence[Any],
    load: Callable[[Any], Image.Image],
    options: Sequence[Sequence[str]],
) -> list[torch.Tensor]:
    """Image-vs-caption-options scores: for item i, cosine(image_i, option_ij) for every option j.

    Images are encoded once per distinct ref (several items may share an image), texts in one flat batch.
    """
    keys: dict[Any, int] = {}
    for r in refs:
        keys.setdefault(r, len(keys))
    img = scorer.encode_lazy(list(keys), load)
    flat = [t for opts in options for t in opts]
    txt = scorer.encode_texts(flat)
    out, k = [], 0
    for r, opts in zip(refs, options):
        out.append(txt[k : k + len(opts)] @ img[keys[r]])
        k += len(opts)
    return out


def thumbnail(image: Image.Image, size: int = 192) -> Image.Image:
    im = image.copy()
    im.thumbnail((size, size))
    return im


def side_by_side(images: list[Image.Image], height: int = 96) -> Image.Image:
    """Images scaled to one height and pasted left to right (a Winoground pair as one picture)."""
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    out = Image.new("RGB", (sum(im.width for im in scaled) + 4 * (len(scaled) - 1), height), (255, 255, 255))
    x = 0
    for im in scaled:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + 4
    return out
