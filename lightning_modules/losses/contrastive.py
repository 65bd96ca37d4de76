"""Symmetric InfoNCE (CLIP) loss with open_clip semantics, distributed-exact.

Each rank computes logits of its B local images against all W·B gathered texts and of its B local texts against
all gathered images (open_clip `local_loss=True, gather_with_grad=True`), labels offset by rank·B. Summed over
ranks and divided by the world size, the gradient equals the single-process gradient on the global batch.
Logits and cross-entropy are computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.losses.base import LossInputs, gather_with_grad, world


class ContrastiveLoss(nn.Module):
    """Args:
    weight: multiplier of the term.
    name: the term's name in logs (`<name>_loss`).
    """

    def __init__(self, weight: float = 1.0, name: str = "contrastive") -> None:
        super().__init__()
        self.weight = weight
        self.name = name

    def forward(self, x: LossInputs) -> dict[str, torch.Tensor]:
        img_BD, txt_BD = x.img_BD.float(), x.txt_BD.float()
        rank, _ = world()
        all_img_GD, all_txt_GD = gather_with_grad(img_BD), gather_with_grad(txt_BD)
        scale = x.logit_scale.float()
        logits_i2t_BG = scale * img_BD @ all_txt_GD.T
        logits_t2i_BG = scale * txt_BD @ all_img_GD.T
        labels_B = torch.arange(img_BD.shape[0], device=img_BD.device) + rank * img_BD.shape[0]
        loss = (F.cross_entropy(logits_i2t_BG, labels_B) + F.cross_entropy(logits_t2i_BG, labels_B)) / 2
        return {f"{self.name}_loss": self.weight * loss}
