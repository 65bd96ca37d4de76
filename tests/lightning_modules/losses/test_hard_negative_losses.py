"""Hard-negative losses against naive loop references; distributed gradients equal single-process ones."""

import os

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.losses.base import LossInputs, LossSum, index_to_device
from lightning_modules.losses.contrastive import ContrastiveLoss
from lightning_modules.losses.hard_negative import HardNegativeImage, HardNegativeText, select, take
from lightning_modules.losses.pair_positive import PairPositive
from tests.helpers import free_port


def f(n, d=16, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def inputs(seed=0, b=4):
    return LossInputs(
        img_BD=f(b, seed=seed),
        txt_BD=f(b, seed=seed + 1),
        logit_scale=torch.tensor(12.0),
        img_neg_MD=f(3, seed=seed + 2),
        txt_neg_ND=f(5, seed=seed + 3),
        img_neg_owner_M=torch.tensor([0, 2, 2]),
        txt_neg_owner_N=torch.tensor([0, 0, 1, 3, 3]),
        img_neg_pair_M=torch.tensor([1, -1, 2]),
        img_neg_kind=["compositional/color", "structure/patch_shuffle", "compositional/size"],
        txt_neg_kind=[
            "compositional/color",
            "compositional/size",
            "structure/trigram_shuffle",
            "compositional/position",
            "structure/trigram_shuffle",
        ],
    )


def ce(logits, target):
    return -(logits[target] - torch.logsumexp(logits, 0))


def naive_columns(anchor, pos, neg, scale):
    cols = torch.cat([pos, neg])
    return sum(ce(torch.stack([scale * anchor[i] @ c for c in cols]), i) for i in range(len(anchor))) / len(
        anchor
    )


def naive_per_sample(anchor, pos, neg, owner, scale):
    losses = []
    for i in range(len(anchor)):
        own = [neg[k] for k in range(len(neg)) if owner[k] == i]
        if own:
            losses.append(ce(torch.stack([scale * anchor[i] @ c for c in [pos[i], *own]]), 0))
    return sum(losses) / len(losses)


def naive_positive_role(anchor, pos, neg, owner, scale):
    losses = []
    for k in range(len(neg)):
        i = int(owner[k])
        cols = [neg[k] if j == i else pos[j] for j in range(len(pos))]
        losses.append(ce(torch.stack([scale * anchor[i] @ c for c in cols]), i))
    return sum(losses) / len(losses)


def test_text_columns_matches_naive():
    x = inputs()
    out = HardNegativeText(weight=1.0, kinds=None)(x)
    ref = naive_columns(x.img_BD, x.txt_BD, x.txt_neg_ND, x.logit_scale)
    torch.testing.assert_close(out["hardneg_text_loss"], ref)
    assert out["hardneg_text_count"] == 5


def test_kind_selection():
    x = inputs()
    out = HardNegativeText(kinds=["compositional/"])(x)
    keep = [0, 1, 3]
    ref = naive_columns(x.img_BD, x.txt_BD, x.txt_neg_ND[keep], x.logit_scale)
    torch.testing.assert_close(out["hardneg_text_loss"], ref)
    assert out["hardneg_text_count"] == 3


def test_text_per_sample_matches_naive():
    x = inputs()
    out = HardNegativeText(mode="per_sample", kinds=None, weight=2.0)(x)
    ref = naive_per_sample(x.img_BD, x.txt_BD, x.txt_neg_ND, x.txt_neg_owner_N, x.logit_scale)
    torch.testing.assert_close(out["hardneg_text_loss"], 2.0 * ref)


def test_image_columns_and_per_sample_match_naive():
    x = inputs()
    out = HardNegativeImage(kinds=None)(x)
    torch.testing.assert_close(
        out["hardneg_image_loss"], naive_columns(x.txt_BD, x.img_BD, x.img_neg_MD, x.logit_scale)
    )
    out = HardNegativeImage(kinds=None, mode="per_sample")(x)
    ref = naive_per_sample(x.txt_BD, x.img_BD, x.img_neg_MD, x.img_neg_owner_M, x.logit_scale)
    torch.testing.assert_close(out["hardneg_image_loss"], ref)


def test_positive_role_matches_naive():
    x = inputs()
    out = HardNegativeText(kinds=["structure/"], role="positive", name="structure_text")(x)
    keep = [2, 4]
    ref = naive_positive_role(x.img_BD, x.txt_BD, x.txt_neg_ND[keep], x.txt_neg_owner_N[keep], x.logit_scale)
    torch.testing.assert_close(out["structure_text_loss"], ref)


def test_pair_positive_matches_naive():
    x = inputs()
    out = PairPositive(weight=1.0)(x)
    imgs = torch.cat([x.img_BD, x.img_neg_MD[[0, 2]]])
    txts = torch.cat([x.txt_BD, x.txt_neg_ND[[1, 2]]])
    s = x.logit_scale
    n = len(imgs)
    ref = sum(
        ce(torch.stack([s * imgs[i] @ t for t in txts]), i)
        + ce(torch.stack([s * txts[i] @ im for im in imgs]), i)
        for i in range(n)
    ) / (2 * n)
    torch.testing.assert_close(out["pair_positive_loss"], ref)
    assert out["pair_positive_count"] == 2
    x.img_BD.requires_grad_(True)
    x.img_neg_pair_M = torch.full(
        (3,), -1
    )  # image negatives, none paired: the term is off, still in the graph
    out = PairPositive(weight=1.0)(x)
    out["pair_positive_loss"].backward()
    assert out["pair_positive_loss"] == 0 and out["pair_positive_count"] == 0
    assert x.img_BD.grad is not None and torch.isfinite(x.img_BD.grad).all()


def test_no_negatives_gives_zero_with_graph():
    b = 3
    img, txt = f(b).requires_grad_(True), f(b, seed=1).requires_grad_(True)
    x = LossInputs(
        img_BD=img,
        txt_BD=txt,
        logit_scale=torch.tensor(10.0),
        img_neg_MD=f(0),
        txt_neg_ND=f(0),
        img_neg_owner_M=torch.zeros(0, dtype=torch.long),
        txt_neg_owner_N=torch.zeros(0, dtype=torch.long),
        img_neg_pair_M=torch.zeros(0, dtype=torch.long),
    )
    total = LossSum(
        {
            "a": HardNegativeText(mode="per_sample"),
            "b": PairPositive(),
            "c": HardNegativeText(role="positive", name="pos"),
        }
    )(x)
    s = sum(v for k, v in total.items() if k.endswith("_loss"))
    s.backward()
    assert s.item() == 0.0 and img.grad is not None


def test_hard_negatives_raise_loss_when_negative_is_close():
    x = inputs()
    x.txt_BD = x.img_BD.clone()  # aligned positives
    near = x.img_BD[x.txt_neg_owner_N] * 0.9 + 0.1 * x.txt_neg_ND
    far = HardNegativeText(kinds=None)(x)["hardneg_text_loss"]
    x.txt_neg_ND = F.normalize(near, dim=-1)
    assert HardNegativeText(kinds=None)(x)["hardneg_text_loss"] > far


def _worker(rank, world, port, full, q):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = full["img"].shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    img = full["img"][sl].clone().requires_grad_(True)
    txt = full["txt"][sl].clone().requires_grad_(True)
    mine = (full["txt_owner"] >= rank * b) & (full["txt_owner"] < (rank + 1) * b)
    tneg = full["tneg"][mine].clone().requires_grad_(True)
    mine_i = (full["img_owner"] >= rank * b) & (full["img_owner"] < (rank + 1) * b)
    ineg = full["ineg"][mine_i].clone().requires_grad_(True)
    x = LossInputs(
        img_BD=img,
        txt_BD=txt,
        logit_scale=full["scale"],
        img_neg_MD=ineg,
        txt_neg_ND=tneg,
        img_neg_owner_M=full["img_owner"][mine_i] - rank * b,
        txt_neg_owner_N=full["txt_owner"][mine] - rank * b,
        img_neg_pair_M=torch.full((int(mine_i.sum()),), -1),
        img_neg_kind=["c"] * int(mine_i.sum()),
        txt_neg_kind=["c"] * int(mine.sum()),
    )
    loss = LossSum(
        {
            "c": ContrastiveLoss(),
            "t": HardNegativeText(kinds=None),
            "i": HardNegativeImage(kinds=None),
            "p": HardNegativeText(kinds=None, mode="per_sample", name="ps"),
        }
    )(x)
    total = sum(v for k, v in loss.items() if k.endswith("_loss"))
    total.backward()
    q.put(
        (
            rank,
            {
                n: (t.grad / world).clone()
                for n, t in [("img", img), ("txt", txt), ("tneg", tneg), ("ineg", ineg)]
            },
            mine,
            mine_i,
        )
    )
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_hard_negative_gradients_equal_global_batch():
    b, world = 6, 2
    full = {
        "img": f(b, seed=10),
        "txt": f(b, seed=11),
        "tneg": f(7, seed=12),
        "ineg": f(3, seed=13),
        "txt_owner": torch.tensor([0, 0, 1, 3, 4, 4, 5]),
        "img_owner": torch.tensor([1, 3, 3]),
        "scale": torch.tensor(15.0),
    }
    ref = {k: full[k].clone().requires_grad_(True) for k in ("img", "txt", "tneg", "ineg")}
    x = LossInputs(
        img_BD=ref["img"],
        txt_BD=ref["txt"],
        logit_scale=full["scale"],
        img_neg_MD=ref["ineg"],
        txt_neg_ND=ref["tneg"],
        img_neg_owner_M=full["img_owner"],
        txt_neg_owner_N=full["txt_owner"],
        img_neg_pair_M=torch.full((3,), -1),
        img_neg_kind=["c"] * 3,
        txt_neg_kind=["c"] * 7,
    )
    loss = LossSum(
        {
            "c": ContrastiveLoss(),
            "t": HardNegativeText(kinds=None),
            "i": HardNegativeImage(kinds=None),
            "p": HardNegativeText(kinds=None, mode="per_sample", name="ps"),
        }
    )(x)
    sum(v for k, v in loss.items() if k.endswith("_loss")).backward()
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, full, q)) for r in range(world)]
    for p in procs:
        p.start()
    res = sorted(q.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(60)
    for name in ("img", "txt"):
        torch.testing.assert_close(torch.cat([r[1][name] for r in res]), ref[name].grad)
    got_t = torch.zeros_like(ref["tneg"].grad)
    got_i = torch.zeros_like(ref["ineg"].grad)
    for _, grads, mine, mine_i in res:
        got_t[mine] = grads["tneg"]
        got_i[mine_i] = grads["ineg"]
    torch.testing.assert_close(got_t, ref["tneg"].grad)
    torch.testing.assert_close(got_i, ref["ineg"].grad)


def test_intra_modal_separation_matches_hand_computed_hinge():
    from lightning_modules.losses.intra_modal import IntraModalSeparation

    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor(
        [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
    )  # cos with owner: 0.8, 1.0 (kind not selected), 0.0
    x = LossInputs(
        img_BD=txt.clone(),
        txt_BD=txt,
        logit_scale=torch.tensor(10.0),
        txt_neg_ND=neg,
        txt_neg_owner_N=torch.tensor([0, 0, 1]),
        txt_neg_kind=["compositional/position", "compositional/color", "compositional/swap_objects"],
    )
    term = IntraModalSeparation(
        "text", kinds=["compositional/position", "compositional/swap_objects"], margin=0.5, weight=2.0
    )
    out = term(x)
    # selected cosines 0.8 and 0.0: hinge (0.3 + 0) / 2 = 0.15, weight 2 -> 0.3; mean cosine 0.4.
    torch.testing.assert_close(out["intra_text_loss"], torch.tensor(0.3))
    torch.testing.assert_close(out["intra_text_cos"], torch.tensor(0.4))
    # No selected negative: a zero loss that still depends on the features (same graph on every rank).
    empty = IntraModalSeparation("image")(x)
    assert float(empty["intra_image_loss"]) == 0.0
    with pytest.raises(ValueError, match="modality"):
        IntraModalSeparation("audio")


def test_intra_modal_term_switches_off_at_until_step():
    from lightning_modules.losses.intra_modal import IntraModalSeparation

    pos = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    x = LossInputs(
        img_BD=pos,
        txt_BD=pos.clone().requires_grad_(),
        logit_scale=torch.tensor(10.0),
        txt_neg_ND=pos.clone(),
        txt_neg_owner_N=torch.tensor([0, 1]),
        txt_neg_kind=["compositional/position"] * 2,
        step=5,
    )
    term = IntraModalSeparation("text", margin=0.5)
    assert float(term(x)["intra_text_loss"]) == pytest.approx(0.5)  # cos 1 - margin 0.5
    off = IntraModalSeparation("text", margin=0.5, until_step=5)(x)
    assert float(off["intra_text_loss"]) == 0.0 and float(off["intra_text_cos"]) == pytest.approx(1.0)
    off["intra_text_loss"].backward()  # still in the graph
    assert IntraModalSeparation("text", margin=0.5, until_step=6)(x)["intra_text_loss"] > 0
    with pytest.raises(ValueError, match="until_step or schedule"):
        IntraModalSeparation("text", until_step=5, schedule=[[2, 0.5]])


def test_select_and_take_are_host_index_selection():
    kinds = ["compositional/color", "structure/x", "compositional/position", "compositional/swap_objects"]
    assert select(kinds, None) == [0, 1, 2, 3]
    assert select(kinds, ["compositional/position", "compositional/swap_objects"]) == [2, 3]
    x = torch.arange(8.0).view(4, 2)
    assert take(x, [0, 1, 2, 3]) is x  # everything kept: no copy
    torch.testing.assert_close(take(x, [3, 1]), x[[3, 1]])
    assert take(x, []).shape == (0, 2)
    idx = index_to_device([2, 0], "cpu")
    assert idx.dtype == torch.long and idx.tolist() == [2, 0]


def test_per_sample_kind_selection_with_samples_without_negatives_matches_naive():
    # kinds select negatives of samples 0 and 3 only: samples 1 and 2 have none and must not enter the mean
    x = inputs()
    x.img_BD.requires_grad_(True)
    out = HardNegativeText(mode="per_sample", kinds=["compositional/"])(x)
    keep = [0, 1, 3]
    ref = naive_per_sample(x.img_BD, x.txt_BD, x.txt_neg_ND[keep], x.txt_neg_owner_N[keep], x.logit_scale)
    torch.testing.assert_close(out["hardneg_text_loss"], ref)
    assert float(out["hardneg_text_count"]) == 3
    out["hardneg_text_loss"].backward()
    grad = x.img_BD.grad
    assert grad[[1, 2]].abs().max() == 0 and grad[[0, 3]].abs().max() > 0


def test_terms_in_an_embedding_slice_score_only_that_slice():
    import pytest
    import torch.nn.functional as F

    from lightning_modules.losses.intra_modal import IntraModalSeparation

    x = inputs()
    lo, hi = 4, 12

    def sl(t):
        return F.normalize(t[:, lo:hi], dim=-1)

    out = HardNegativeText(mode="per_sample", kinds=None, dims=[lo, hi])(x)
    ref = naive_per_sample(sl(x.img_BD), sl(x.txt_BD), sl(x.txt_neg_ND), x.txt_neg_owner_N, x.logit_scale)
    torch.testing.assert_close(out["hardneg_text_loss"], ref)
    full = HardNegativeText(mode="per_sample", kinds=None)(x)["hardneg_text_loss"]
    assert not torch.isclose(full, ref)  # the slice changes the term

    term = IntraModalSeparation(modality="text", kinds=None, margin=0.1, dims=[lo, hi])
    got = term(x)
    cos = (sl(x.txt_BD)[x.txt_neg_owner_N] * sl(x.txt_neg_ND)).sum(-1)
    torch.testing.assert_close(got["intra_text_loss"], (cos - 0.1).clamp_min(0).mean())
    torch.testing.assert_close(got["intra_text_cos"], cos.mean())

    with pytest.raises(ValueError, match="rel.dims"):
        HardNegativeText(dims=[8, 4], name="rel")
    with pytest.raises(ValueError, match="exceed the embedding size"):
        HardNegativeText(mode="per_sample", kinds=None, dims=[0, 64])(x)


def test_weight_schedule_sets_the_weight_from_each_step_on():
    import pytest

    from lightning_modules.losses.intra_modal import IntraModalSeparation

    x = inputs()
    term = HardNegativeText(mode="per_sample", kinds=None, weight=1.0, schedule=[[4, 0.5], [8, 0.0]])
    base = HardNegativeText(mode="per_sample", kinds=None)(x)["hardneg_text_loss"]
    for step, w in [(None, 1.0), (0, 1.0), (3, 1.0), (4, 0.5), (7, 0.5), (8, 0.0), (100, 0.0)]:
        x.step = step
        torch.testing.assert_close(term(x)["hardneg_text_loss"], w * base)
    x.txt_BD.requires_grad_(True)
    x.step = 9
    out = term(x)["hardneg_text_loss"]
    assert out.requires_grad and out == 0  # off, but still in the graph (one backward on every rank)
    intra = IntraModalSeparation("text", kinds=None, margin=0.0, schedule=[[2, 3.0]])
    x.step = 1
    one = intra(x)["intra_text_loss"]
    x.step = 2
    torch.testing.assert_close(intra(x)["intra_text_loss"], 3.0 * one)
    with pytest.raises(ValueError, match="increasing"):
        HardNegativeText(schedule=[[5, 0.1], [2, 0.0]])
    with pytest.raises(ValueError, match="step, weight"):
        HardNegativeText(schedule=[[5]])


def test_fractional_schedule_steps_follow_the_run_length():
    import pytest

    from lightning_modules.losses.base import weight_at

    x = inputs()
    term = HardNegativeText(mode="per_sample", kinds=None, schedule=[[0.5, 0.2]])
    base = HardNegativeText(mode="per_sample", kinds=None)(x)["hardneg_text_loss"]
    for total, step, w in [(800, 399, 1.0), (800, 400, 0.2), (100, 49, 1.0), (100, 50, 0.2)]:
        x.step, x.total_steps = step, total
        torch.testing.assert_close(term(x)["hardneg_text_loss"], w * base)
    assert weight_at(1.0, [(0.5, 0.2)], None, None) == 1.0  # outside training: the base weight
    with pytest.raises(ValueError, match="max_steps"):
        weight_at(1.0, [(0.5, 0.2)], 10, -1)  # an epoch-based run has no length to take a share of
    with pytest.raises(ValueError, match="all ints or all fractions"):
        HardNegativeText(schedule=[[0.2, 0.5], [600, 0.1]])
    with pytest.raises(ValueError, match="fractions of the run"):
        HardNegativeText(schedule=[[1.5, 0.1]])


def test_fixed_scale_replaces_the_learned_logit_scale_for_that_term():
    import pytest

    x = inputs()
    x.logit_scale = torch.tensor(12.0, requires_grad=True)
    x.txt_BD.requires_grad_(True)
    out = HardNegativeImage(mode="per_sample", kinds=None, scale=50.0)(x)["hardneg_image_loss"]
    ref = naive_per_sample(x.txt_BD, x.img_BD, x.img_neg_MD, x.img_neg_owner_M, 50.0)
    torch.testing.assert_close(out, ref)
    learned = HardNegativeImage(mode="per_sample", kinds=None)(x)["hardneg_image_loss"]
    assert not torch.isclose(out, learned)
    out.backward()
    assert x.txt_BD.grad.abs().max() > 0
    assert x.logit_scale.grad is None  # the learned scale gets no gradient from a fixed-scale term
    with pytest.raises(ValueError, match="rel.scale"):
        HardNegativeText(scale=0.0, name="rel")


def test_invariance_pulls_selected_rewrites_towards_their_positive():
    import pytest

    from lightning_modules.losses.invariance import IntraModalInvariance

    x = inputs()
    x.txt_neg_kind = ["paraphrase/list_order", "compositional/size", "paraphrase/list_order", "x", "y"]
    x.txt_BD.requires_grad_(True)
    term = IntraModalInvariance("text", kinds=["paraphrase/"], margin=0.9, weight=2.0, name="lo")
    out = term(x)
    owner = x.txt_neg_owner_N[[0, 2]]
    cos = torch.stack([x.txt_BD[int(o)] @ x.txt_neg_ND[k] for o, k in zip(owner, [0, 2])])
    torch.testing.assert_close(out["lo_loss"], 2.0 * (0.9 - cos).clamp_min(0).mean())
    torch.testing.assert_close(out["lo_cos"], cos.mean())
    out["lo_loss"].backward()
    # owners of the selected rewrites are samples 0 and 1; the others get no gradient
    assert x.txt_BD.grad[[2, 3]].abs().max() == 0 and x.txt_BD.grad[[0, 1]].abs().max() > 0
    # a step of gradient descent raises the pairs' cosine
    stepped = (x.txt_BD - 0.1 * x.txt_BD.grad).detach()
    after = torch.stack([stepped[int(o)] @ x.txt_neg_ND[k] for o, k in zip(owner, [0, 2])])
    assert (after > cos.detach()).all()
    none = IntraModalInvariance("text", kinds=["absent/"])(x)
    assert none["invariance_text_loss"] == 0 and none["invariance_text_loss"].requires_grad
    with pytest.raises(ValueError, match="margin"):
        IntraModalInvariance("text", margin=1.5)
