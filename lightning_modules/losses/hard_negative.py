"""Hard-negative terms.

`HardNegativeText` (NegCLIP columns): each image scores all positive captions of the (global) batch plus the hard
negative captions; cross-entropy towards its own caption. `mode: per_sample` instead scores each image against
only its own caption and its own K negatives ((1+K)-way). `HardNegativeImage` is the mirror: each caption scores
all positive images plus the hard-negative images. `kinds` selects negatives by kind prefix (e.g.
`["structure/"]`); `role: positive` turns the selected negatives into extra positives (invariance): each one must
beat all *other* positives of the batch in place of its owner's positive.

Distributed: positives are gathered with gradients; in `columns` mode negatives are gathered too (padded to the
largest rank, padding masked), so 2 ranks give the same gradients as one process with the global batch.
Shape legend: B local positives, G global positives, N selected negatives (local), N' (global), D dim.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.losses.base import (
    LossInputs,
    check_dims,
    check_schedule,
    gather_padded,
    gather_with_grad,
    index_to_device,
    subspace,
    weight_at,
    world,
)


def select(neg_kind: list[str], prefixes: list[str] | None) -> list[int]:
    """Indices of the negatives whose kind starts with any prefix (all when prefixes is None). Computed on the
    host from the kind strings and applied with `index_select`: a boolean mask on the device would make every
    training step wait for the GPU (mask indexing synchronises to learn the result's size)."""
    if prefixes is None:
        return list(range(len(neg_kind)))
    return [i for i, k in enumerate(neg_kind) if any(k.startswith(p) for p in prefixes)]


def take(x: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Rows `keep` of `x` (a host index list), without a host synchronisation."""
    if len(keep) == x.shape[0]:
        return x
    return x.index_select(0, index_to_device(keep, x.device))


def _global_mean(local_sum: torch.Tensor, local_count: int | torch.Tensor) -> torch.Tensor:
    """Mean over all ranks' items when ranks hold different numbers of them. DDP averages gradients over the
    W ranks, so each rank returns W · (its sum) / (global count): the average of these is the global mean.
    `local_count` may be a device tensor (no host synchronisation to read it)."""
    _, ws = world()
    if not torch.is_tensor(local_count):
        local_count = torch.full((), float(local_count), device=local_sum.device)
    count = local_count.float().reshape(1)
    if ws > 1:
        count = count.clone()
        torch.distributed.all_reduce(count)
    return (local_sum * ws / count.clamp_min(1.0)).reshape(())


def _hard_negative_term(
    anchor_BD: torch.Tensor,
    pos_BD: torch.Tensor,
    neg_ND: torch.Tensor,
    owner_N: torch.Tensor,
    scale: torch.Tensor,
    mode: str,
    role: str,
) -> torch.Tensor:
    rank, _ = world()
    b = anchor_BD.shape[0]
    anchor_BD, pos_BD, neg_ND, scale = anchor_BD.float(), pos_BD.float(), neg_ND.float(), scale.float()
    if role == "positive":
        # Each selected "negative" replaces its owner's positive among all gathered positives.
        all_pos_GD = gather_with_grad(pos_BD)
        a_ND = anchor_BD[owner_N]
        logits_NG = scale * a_ND @ all_pos_GD.T
        target_N = owner_N + rank * b
        logits_NG = logits_NG.scatter(1, target_N[:, None], scale * (a_ND * neg_ND).sum(-1, keepdim=True))
        return _global_mean(F.cross_entropy(logits_NG, target_N, reduction="sum"), neg_ND.shape[0])
    if mode == "per_sample":
        pos_logit_B = scale * (anchor_BD * pos_BD).sum(-1)
        neg_logit_N = scale * (anchor_BD[owner_N] * neg_ND).sum(-1)
        # index_fill_, not `has_neg_B[owner_N] = True`: that assignment copies the host value True to the device
        # from pageable memory, a host synchronisation per call (SyncAudit).
        has_neg_B = torch.zeros(b, dtype=torch.bool, device=anchor_BD.device).index_fill_(0, owner_N, True)
        # logsumexp over {own positive} ∪ {own negatives}, per sample.
        m_B = torch.full((b,), float("-inf"), device=anchor_BD.device).scatter_reduce(
            0, owner_N, neg_logit_N, reduce="amax"
        )
        m_B = torch.maximum(m_B, pos_logit_B).detach()
        sum_B = (pos_logit_B - m_B).exp() + torch.zeros_like(pos_logit_B).index_add(
            0, owner_N, (neg_logit_N - m_B[owner_N]).exp()
        )
        loss_B = -(pos_logit_B - m_B - sum_B.log())  # 0 for samples without negatives (and masked anyway)
        return _global_mean(torch.where(has_neg_B, loss_B, 0.0).sum(), has_neg_B.sum())
    # columns (NegCLIP): anchors against all gathered positives and all gathered negatives.
    all_pos_GD = gather_with_grad(pos_BD)
    all_neg_ND = gather_padded(neg_ND)
    cols_CD = torch.cat([all_pos_GD, all_neg_ND])
    logits_BC = scale * anchor_BD @ cols_CD.T
    labels_B = torch.arange(b, device=anchor_BD.device) + rank * b
    return F.cross_entropy(logits_BC, labels_B)


class _HardNegative(nn.Module):
    modality = "text"

    def __init__(
        self,
        weight: float = 1.0,
        mode: Literal["columns", "per_sample"] = "columns",
        kinds: list[str] | None = None,
        role: Literal["negative", "positive"] = "negative",
        name: str | None = None,
        dims: list[int] | None = None,
        schedule: list | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        name = name or f"hardneg_{self.modality}"
        self.dims = check_dims(dims, name)
        self.schedule = check_schedule(schedule, name)
        if scale is not None and not scale > 0:
            raise ValueError(f"{name}.scale must be a positive logit scale (e.g. 50) or null, got {scale}")
        self.scale = scale
        if mode not in ("columns", "per_sample") or role not in ("negative", "positive"):
            raise ValueError(
                f"{name}: mode must be columns|per_sample and role negative|positive, got {mode}, {role}"
            )
        self.weight, self.mode, self.kinds, self.role, self.name = weight, mode, kinds, role, name

    def forward(self, x: LossInputs) -> dict[str, torch.Tensor]:
        if self.modality == "text":
            anchor, pos, neg, owner, kinds = (
                x.img_BD,
                x.txt_BD,
                x.txt_neg_ND,
                x.txt_neg_owner_N,
                x.txt_neg_kind,
            )
        else:
            anchor, pos, neg, owner, kinds = (
                x.txt_BD,
                x.img_BD,
                x.img_neg_MD,
                x.img_neg_owner_M,
                x.img_neg_kind,
            )
        keep = select(kinds, self.kinds)
        anchor, pos, neg = (subspace(t, self.dims) for t in (anchor, pos, take(neg, keep)))
        # scale: a fixed logit scale for this term (the learned one then gets no gradient from it)
        scale = x.logit_scale if self.scale is None else torch.full((), self.scale, device=anchor.device)
        loss = _hard_negative_term(anchor, pos, neg, take(owner, keep), scale, self.mode, self.role)
        count = torch.full((), float(len(keep)), device=anchor.device)
        # a weight of 0 keeps the term in the graph: every rank runs the same backward
        weight = weight_at(self.weight, self.schedule, x.step, x.total_steps)
        return {f"{self.name}_loss": weight * loss, f"{self.name}_count": count}


class HardNegativeText(_HardNegative):
    """Image → [positive captions + hard-negative captions]. Args: weight; mode columns|per_sample; kinds
    (prefixes; None = all); role negative|positive; name (logged as `<name>_loss`, default hardneg_text); dims
    ([lo, hi]: the term scores only that slice of the embedding, re-normalised; None = all of it); schedule
    ([[step, weight], ...]: from each step on the weight is that value, e.g. [[400, 0.2]]); scale (a fixed logit
    scale for this term instead of the model's learned one, e.g. 50; None = the learned one)."""

    modality = "text"


class HardNegativeImage(_HardNegative):
    """Caption → [positive images + hard-negative images]. Same arguments (default name hardneg_image)."""

    modality = "image"
