"""Benchmark interface and the scorer every benchmark uses (model + preprocessing + tokenizer)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


class Benchmark(ABC):
    name: str = "benchmark"

    @abstractmethod
    def run(self, scorer: ClipScorer, *, context: dict[str, Any] | None = None) -> BenchmarkResult:
        """Scores `scorer`. `context` carries the run config of the checkpoint under evaluation."""
