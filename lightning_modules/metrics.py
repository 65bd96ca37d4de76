"""Retrieval metrics computed chunk-wise from features (bounded memory).

Multi-caption semantics: image→text is a hit at K if *any* caption of the image ranks in the top K
(torchmetrics `RetrievalHitRate`, not `RetrievalRecall`); text→image is a hit if its one image is in the top K.
"""

from __future__ import annotations

import torch

from lightning_modules.losses.base import index_to_device


@torch.no_grad()
def retrieval_recall(
    img_ID: torch.Tensor,
    txt_TD: torch.Tensor,
    txt_img_T: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Args:
    img_ID: I image features, txt_TD: T text features (L2-normalised).
    txt_img_T: index of each text's image in [0, I).
    Returns: {"i2t_r1": .., "t2i_r1": .., ..., "r_mean": mean of all} as percentages.
    """
    num_img, num_txt = img_ID.shape[0], txt_TD.shape[0]
    img_ID, txt_TD = img_ID.float(), txt_TD.float()
    txt_img_T = txt_img_T.to(img_ID.device)
    out: dict[str, float] = {}
    # text -> image: rank of the true image among all images = number of images scoring strictly higher.
    t2i_rank_T = torch.empty(num_txt, dtype=torch.long, device=img_ID.device)
    for s in range(0, num_txt, chunk):
        sim_CI = txt_TD[s : s + chunk] @ img_ID.T
        true_C = sim_CI.gather(1, txt_img_T[s : s + chunk, None])
        t2i_rank_T[s : s + chunk] = (sim_CI > true_C).sum(1)
    # image -> text: best rank over the image's captions.
    i2t_rank_I = torch.full((num_img,), num_txt, dtype=torch.long, device=img_ID.device)
    for s in range(0, num_img, chunk):
        sim_CT = img_ID[s : s + chunk] @ txt_TD.T
        own_CT = txt_img_T[None, :] == torch.arange(s, min(s + chunk, num_img), device=img_ID.device)[:, None]
        best_own_C = sim_CT.masked_fill(~own_CT, float("-inf")).max(1).values
        rank_C = (sim_CT > best_own_C[:, None]).sum(1)
        has_caption_C = own_CT.any(1)
        i2t_rank_I[s : s + chunk] = torch.where(has_caption_C, rank_C, torch.full_like(rank_C, num_txt))
    has_caption = torch.bincount(txt_img_T, minlength=num_img) > 0
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * (i2t_rank_I[has_caption] < k).float().mean().item()
        out[f"t2i_r{k}"] = 100.0 * (t2i_rank_T < k).float().mean().item()
    out["r_mean"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def hardneg_stats(
    anchor_BD: torch.Tensor,
    pos_BD: torch.Tensor,
    neg_ND: torch.Tensor,
    owner_N: torch.Tensor,
    kinds: list[str],
) -> dict[str, torch.Tensor]:
    """Per-kind sums over hard negatives, for the relational-binding diagnostics.

    Each negative n (owned by sample b = owner_N[n]) forms the triple (anchor_b, pos_b, neg_n). For text negatives
    the anchor is b's image, pos its caption and neg a rewritten caption; for image negatives the anchor is b's
    caption, pos its image, neg an edited image. Features are L2-normalised, so dot products are cosines.

    Returns {kind: tensor([correct, cos_sum, count])}: `correct` counts triples where the anchor scores its
    positive strictly higher than the negative; `cos_sum` sums cos(pos_b, neg_n) (tower sensitivity: close to 1
    means the tower barely tells the negative from the positive).
    """
    if neg_ND is None or neg_ND.shape[0] == 0:
        return {}
    # No host synchronisation (this runs every training step): kinds become integer ids on the host, one
    # index_add sums per kind on the device. (Boolean-mask indexing per kind synchronised once per kind.)
    names = sorted(set(kinds))
    ids = {k: i for i, k in enumerate(names)}
    kind_N = index_to_device([ids[k] for k in kinds], neg_ND.device)
    with torch.no_grad():
        anchor_ND = anchor_BD.detach().float()[owner_N]
        pos_ND = pos_BD.detach().float()[owner_N]
        neg_ND = neg_ND.detach().float()
        correct_N = ((anchor_ND * pos_ND).sum(-1) > (anchor_ND * neg_ND).sum(-1)).float()
        cos_N = (pos_ND * neg_ND).sum(-1)
        rows_N3 = torch.stack([correct_N, cos_N, torch.ones_like(cos_N)], dim=1)
        sums_K3 = rows_N3.new_zeros(len(names), 3).index_add_(0, kind_N, rows_N3)
    return dict(zip(names, sums_K3.unbind(0)))


@torch.no_grad()
def mean_offdiag_cos(x_BD: torch.Tensor) -> torch.Tensor:
    """Mean cosine between different rows (the reference level for the sensitivity cosines)."""
    b = x_BD.shape[0]
    if b < 2:
        return x_BD.new_zeros(())
    sim = x_BD.float() @ x_BD.float().T
    return (sim.sum() - sim.diagonal().sum()) / (b * (b - 1))
