"""Intra-modal separation of hard negatives from their positive: each tower on its own is pushed to tell a caption
from its rewrite (e.g. "A left of B" vs "B left of A") and an image from its edit (the objects' positions
exchanged), without the other tower's help.

Why (README "Relational binding"): the cross-modal hard-negative gradient for a spatial relation is a product of
the two towers' sensitivities. When both towers start blind to order/layout (cosine ~1 between a caption and its
swap, and between an image and its re-render), image->[caption, swapped caption] has a symmetric saddle: for the
mirrored scene the push reverses and the expected gradient cancels. A term that needs only one tower breaks it.

loss = weight · mean over selected negatives of relu(cos(positive_b, negative_n) − margin)
Local to each rank (a mean over the rank's selected negatives).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_modules.losses.base import LossInputs, check_dims, check_schedule, subspace, weight_at
from lightning_modules.losses.hard_negative import select, take


def selected_pair_cos(
    x: LossInputs, modality: str, kinds: list[str] | None, dims: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the modality's positives, cosine of each selected extra item with its owner's positive), the cosine None
    when nothing is selected. Shared by the separation term here and `invariance.IntraModalInvariance`."""
    if modality == "text":
        pos, extra, owner, have = x.txt_BD, x.txt_neg_ND, x.txt_neg_owner_N, x.txt_neg_kind
    else:
        pos, extra, owner, have = x.img_BD, x.img_neg_MD, x.img_neg_owner_M, x.img_neg_kind
    keep = select(have, kinds) if have else []  # host indices: no device mask, no synchronisation
    if extra is None or not keep:
        return pos, None
    pos_N = subspace(pos.index_select(0, take(owner, keep)), dims)
    return pos, (pos_N.float() * subspace(take(extra, keep), dims).float()).sum(-1)


class IntraModalSeparation(nn.Module):
    """Args:
    modality: text (captions vs their rewrites) | image (images vs their edits).
    kinds: negative kind prefixes (None = all of the modality's negatives).
    margin: cosines below it cost nothing (the term only removes near-identity, it does not demand opposites).
    weight, name: as every term (logged as `<name>_loss`, `<name>_cos`: mean cosine of the selected pairs).
    until_step: switch the term off from this training step on (None = always on); the cosine is still logged.
        The term's job is to break the symmetric saddle early; afterwards it may only cost capacity. Shorthand for
        `schedule: [[until_step, 0]]` (give one or the other).
    dims: [lo, hi]: the cosine is taken in that slice of the embedding (re-normalised); None = all of it.
    schedule: [[step, weight], ...]: from each step on the weight is that value.
    """

    def __init__(
        self,
        modality: Literal["text", "image"] = "text",
        kinds: list[str] | None = None,
        margin: float = 0.5,
        weight: float = 1.0,
        name: str | None = None,
        until_step: int | None = None,
        dims: list[int] | None = None,
        schedule: list | None = None,
    ) -> None:
        super().__init__()
        if modality not in ("text", "image"):
            raise ValueError(f"intra_modal.modality must be text|image, got {modality!r}")
        if not -1.0 <= margin < 1.0:
            raise ValueError(f"intra_modal.margin must be in [-1, 1), got {margin}")
        self.modality, self.kinds, self.margin, self.weight = modality, kinds, margin, weight
        self.name = name or f"intra_{modality}"
        if until_step is not None:
            if schedule:
                raise ValueError(
                    f"{self.name}: give until_step or schedule, not both (until_step: s = [[s, 0]])"
                )
            schedule = [[until_step, 0.0]]
        self.dims = check_dims(dims, self.name)
        self.schedule = check_schedule(schedule, self.name)

    def forward(self, x: LossInputs) -> dict[str, torch.Tensor]:
        pos, cos_N = selected_pair_cos(x, self.modality, self.kinds, self.dims)
        if cos_N is None:
            zero = pos.sum() * 0.0
            return {f"{self.name}_loss": zero, f"{self.name}_cos": zero.detach()}
        loss = (cos_N - self.margin).clamp_min(0).mean()
        # a weight of 0 keeps the term in the graph: every rank runs the same backward
        weight = weight_at(self.weight, self.schedule, x.step, x.total_steps)
        return {f"{self.name}_loss": weight * loss, f"{self.name}_cos": cos_N.mean().detach()}
