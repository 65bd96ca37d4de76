"""TripletCLIP-style term: each generated pair (I'_C, T'_C) — an edited image and the caption it was edited to
match — is itself a positive pair. A symmetric InfoNCE over the local batch extended with those pairs:
images [I; I'_C] against texts [T; T'_C], so T'_C must pick I'_C over I (and vice versa).

Local to each rank (pairs are not gathered): under DDP this is the mean of per-rank objectives, not the global one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.losses.base import LossInputs


class PairPositive(nn.Module):
    def __init__(self, weight: float = 1.0, name: str = "pair_positive") -> None:
        super().__init__()
        self.weight, self.name = weight, name

    def forward(self, x: LossInputs) -> dict[str, torch.Tensor]:
        paired_M = x.img_neg_pair_M >= 0
        if not paired_M.any():
            zero = (x.img_BD.sum() + x.txt_BD.sum()) * 0.0
            return {f"{self.name}_loss": zero, f"{self.name}_count": zero.detach()}
        img_ED = torch.cat([x.img_BD, x.img_neg_MD[paired_M]]).float()
        txt_ED = torch.cat([x.txt_BD, x.txt_neg_ND[x.img_neg_pair_M[paired_M]]]).float()
        logits_EE = x.logit_scale.float() * img_ED @ txt_ED.T
        labels_E = torch.arange(img_ED.shape[0], device=img_ED.device)
        loss = (F.cross_entropy(logits_EE, labels_E) + F.cross_entropy(logits_EE.T, labels_E)) / 2
        return {f"{self.name}_loss": self.weight * loss, f"{self.name}_count": paired_M.sum().float()}
