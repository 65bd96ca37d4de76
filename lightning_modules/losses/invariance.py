"""Intra-modal invariance: each tower keeps a positive and its meaning-preserving rewrite together (the mirror of
`intra_modal`'s separation). For `paraphrase/list_order` rewrites (datamodules/negatives/list_order.py) it tells the
text tower that the order of a list means nothing, while the relational terms teach it that the order of a relation
does (README "Relational binding").

loss = weight · mean over selected rewrites of relu(margin − cos(positive_b, rewrite_n))
Local to each rank (a mean over the rank's selected rewrites).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_modules.losses.base import LossInputs, check_schedule, weight_at
from lightning_modules.losses.intra_modal import selected_pair_cos


class IntraModalInvariance(nn.Module):
    """Args:
    modality: text (captions vs their rewrites) | image (images vs their image "negatives" of the selected kinds).
    kinds: rewrite kind prefixes, e.g. [paraphrase/] (None = all of the modality's extra items: rarely wanted).
    margin: cosines above it cost nothing (1.0: pull all the way).
    weight, name, schedule: as every term (logged as `<name>_loss`, `<name>_cos`: mean cosine of the pairs).
    """

    def __init__(
        self,
        modality: Literal["text", "image"] = "text",
        kinds: list[str] | None = None,
        margin: float = 1.0,
        weight: float = 1.0,
        name: str | None = None,
        schedule: list | None = None,
    ) -> None:
        super().__init__()
        if modality not in ("text", "image"):
            raise ValueError(f"invariance.modality must be text|image, got {modality!r}")
        if not -1.0 < margin <= 1.0:
            raise ValueError(f"invariance.margin must be in (-1, 1], got {margin}")
        self.modality, self.kinds, self.margin, self.weight = modality, kinds, margin, weight
        self.name = name or f"invariance_{modality}"
        self.schedule = check_schedule(schedule, self.name)

    def forward(self, x: LossInputs) -> dict[str, torch.Tensor]:
        pos, cos_N = selected_pair_cos(x, self.modality, self.kinds)
        if cos_N is None:
            zero = pos.sum() * 0.0
            return {f"{self.name}_loss": zero, f"{self.name}_cos": zero.detach()}
        loss = (self.margin - cos_N).clamp_min(0).mean()
        weight = weight_at(self.weight, self.schedule, x.step, x.total_steps)
        return {f"{self.name}_loss": weight * loss, f"{self.name}_cos": cos_N.mean().detach()}
