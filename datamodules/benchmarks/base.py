"""Benchmark interface and the scorer every benchmark uses (model + preprocessing + tokenizer)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image


class ClipScorer:
    """Encodes PIL images and captions into L2-normalised features with an open_clip model (eval mode)."""

    def __init__(
        self,
        model: torch.nn.Module,
        image_transform: Callable,
        tokenizer: Callable,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for s in range(0, len(images), self.batch_size):
            x = torch.stack([self.image_transform(im) for im in images[s : s + self.batch_size]]).to(
                self.device
            )
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def encode_lazy(self, refs: Sequence[Any], load: Callable[[Any], Image.Image]) -> torch.Tensor:
        """Encodes images loaded batch by batch (`load(ref) -> PIL`), so memory holds one batch of pixels."""
        out = []
        for s in range(0, len(refs), self.batch_size):
            out.append(self.encode_images([load(r) for r in refs[s : s + self.batch_size]]))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), self.batch_size):
            t = self.tokenizer(list(texts[s : s + self.batch_size])).to(self.device)
            out.append(F.normalize(self.model.encode_text(t).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0)


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
