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
        m = 0 if x.img_neg_MD is None else x.img_neg_MD.shape[0]
        n = 0 if x.txt_neg_ND is None else x.txt_neg_ND.shape[0]
        if m == 0 or n == 0:  # shapes are known on the host: no pair possible
            zero = (x.img_BD.sum() + x.txt_BD.sum()) * 0.0
            return {f"{self.name}_loss": zero, f"{self.name}_count": zero.detach()}
        # Every image negative enters, the unpaired ones masked out of rows and columns: selecting the paired
        # ones with a device mask would make every step wait for the GPU to learn how many there are.
        b = x.img_BD.shape[0]
        pair_M = x.img_neg_pair_M
        paired_M = pair_M >= 0
        valid_E = torch.cat([torch.ones(b, dtype=torch.bool, device=pair_M.device), paired_M])
        img_ED = torch.cat([x.img_BD, x.img_neg_MD]).float()
        txt_ED = torch.cat([x.txt_BD, x.txt_neg_ND.index_select(0, pair_M.clamp_min(0))]).float()
        logits_EE = x.logit_scale.float() * img_ED @ txt_ED.T
        logits_EE = logits_EE.masked_fill(~(valid_E[:, None] & valid_E[None, :]), -1e4)
        labels_E = torch.arange(img_ED.shape[0], device=img_ED.device)
        ce_E = F.cross_entropy(logits_EE, labels_E, reduction="none") + F.cross_entropy(
            logits_EE.T, labels_E, reduction="none"
        )
        count = paired_M.sum()
        loss = torch.where(valid_E, ce_E, 0.0).sum() / (2 * (b + count))
        loss = torch.where(
            count > 0, loss, 0.0
        )  # no pair in the batch: the term is off (not a plain CLIP loss)
        return {f"{self.name}_loss": self.weight * loss, f"{self.name}_count": count.float()}
