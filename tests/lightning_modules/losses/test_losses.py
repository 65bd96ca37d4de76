import math
import os

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses.base import LossInputs
from lightning_modules.losses.contrastive import ContrastiveLoss
from tests.helpers import free_port


def naive_clip_loss(img, txt, scale):
    """Per-row -log softmax, written as loops: the reference the vectorised loss must match."""
    b = img.shape[0]
    total = 0.0
    for i in range(b):
        row = torch.stack([scale * img[i] @ txt[j] for j in range(b)])
        total = total - (row[i] - torch.logsumexp(row, 0))
        col = torch.stack([scale * txt[i] @ img[j] for j in range(b)])
        total = total - (col[i] - torch.logsumexp(col, 0))
    return total / (2 * b)


def feats(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(
        torch.randn(b, d, generator=g), dim=-1
    )


def test_contrastive_matches_naive_reference():
    img, txt = feats(8, 16, 0)
    scale = torch.tensor(math.exp(2.0))
    out = ContrastiveLoss(weight=1.0)(LossInputs(img_BD=img, txt_BD=txt, logit_scale=scale))
    assert set(out) == {"contrastive_loss"}
    torch.testing.assert_close(out["contrastive_loss"], naive_clip_loss(img, txt, scale))


def test_contrastive_weight_and_name_and_perfect_alignment():
    img, _ = feats(6, 16, 1)
    scale = torch.tensor(100.0)
    out = ContrastiveLoss(weight=0.5, name="clip")(
        LossInputs(img_BD=img, txt_BD=img.clone(), logit_scale=scale)
    )
    ref = 0.5 * naive_clip_loss(img, img, scale)
    torch.testing.assert_close(out["clip_loss"], ref)
    shuffled = ContrastiveLoss()(LossInputs(img_BD=img, txt_BD=img.roll(1, 0), logit_scale=scale))
    assert shuffled["contrastive_loss"] > 2 * out["clip_loss"]


def test_contrastive_fp32_under_bf16_inputs():
    img, txt = feats(4, 8, 2)
    out = ContrastiveLoss()(
        LossInputs(img_BD=img.bfloat16(), txt_BD=txt.bfloat16(), logit_scale=torch.tensor(10.0))
    )
    assert out["contrastive_loss"].dtype == torch.float32


def _dist_worker(rank, world, port, img, txt, scale, q):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = img.shape[0] // world
    li = img[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    lt = txt[rank * b : (rank + 1) * b].clone().requires_grad_(True)
    loss = ContrastiveLoss()(LossInputs(img_BD=li, txt_BD=lt, logit_scale=scale))["contrastive_loss"]
    loss.backward()
    # DDP averages parameter gradients over ranks; features' gradients are scaled the same way here.
    q.put((rank, loss.item(), (li.grad / world).clone(), (lt.grad / world).clone()))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_contrastive_gradients_equal_global_batch():
    img, txt = feats(8, 16, 3)
    scale = torch.tensor(20.0)
    gi, gt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    ref = ContrastiveLoss()(LossInputs(img_BD=gi, txt_BD=gt, logit_scale=scale))["contrastive_loss"]
    ref.backward()
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_dist_worker, args=(r, 2, port, img, txt, scale, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    losses = [r[1] for r in results]
    assert abs(sum(losses) / 2 - ref.item()) < 1e-5
    torch.testing.assert_close(torch.cat([r[2] for r in results]), gi.grad)
    torch.testing.assert_close(torch.cat([r[3] for r in results]), gt.grad)
