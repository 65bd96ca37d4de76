"""What every loss receives. Shape legend: B positives on this rank, M image negatives, N text negatives,
D embedding dim. Features are L2-normalised; `logit_scale` is already exponentiated (a temperature inverse).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


@dataclass
class LossInputs:
    img_BD: torch.Tensor
    txt_BD: torch.Tensor
    logit_scale: torch.Tensor
    img_neg_MD: torch.Tensor | None = None
    txt_neg_ND: torch.Tensor | None = None
    img_neg_owner_M: torch.Tensor | None = None
    txt_neg_owner_N: torch.Tensor | None = None
    img_neg_kind: list[str] = field(default_factory=list)
    txt_neg_kind: list[str] = field(default_factory=list)


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers `x` along dim 0 from every rank, keeping the autograd graph (backward sums the gradients).

    Every rank must pass the same shape (training loaders use drop_last=True).
    """
    _, ws = world()
    if ws == 1:
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)
