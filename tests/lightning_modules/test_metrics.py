import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

from lightning_modules.metrics import retrieval_recall


def naive(img, txt, txt_img, k):
    sim = img @ txt.T
    i2t = []
    for i in range(img.shape[0]):
        own = (txt_img == i).nonzero().flatten()
        if len(own) == 0:
            continue
        top = sim[i].topk(k).indices
        i2t.append(float(any(t in own for t in top)))
    t2i = [float(txt_img[t] in sim[:, t].topk(k).indices) for t in range(txt.shape[0])]
    return 100 * sum(i2t) / len(i2t), 100 * sum(t2i) / len(t2i)


def test_retrieval_multi_caption_matches_naive_and_torchmetrics_hitrate():
    g = torch.Generator().manual_seed(0)
    n_img, per = 40, 5
    img = F.normalize(torch.randn(n_img, 32, generator=g), dim=-1)
    txt_img = torch.arange(n_img).repeat_interleave(per)
    txt = F.normalize(img[txt_img] + 1.2 * torch.randn(n_img * per, 32, generator=g), dim=-1)
    out = retrieval_recall(img, txt, txt_img, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        i2t, t2i = naive(img, txt, txt_img, k)
        assert abs(out[f"i2t_r{k}"] - i2t) < 1e-4
        assert abs(out[f"t2i_r{k}"] - t2i) < 1e-4
        # torchmetrics hit rate over image queries (any of the 5 captions in the top k).
        sim = img @ txt.T
        target = txt_img[None, :] == torch.arange(n_img)[:, None]
        indexes = torch.arange(n_img)[:, None].expand_as(sim)
        hr = RetrievalHitRate(top_k=k)(sim.flatten(), target.flatten(), indexes=indexes.flatten())
        assert abs(out[f"i2t_r{k}"] - 100 * hr.item()) < 1e-4
    assert 0 < out["i2t_r1"] < 100


def test_retrieval_perfect_and_chance():
    img = torch.eye(16)
    out = retrieval_recall(img, img.clone(), torch.arange(16))
    assert out["i2t_r1"] == 100.0 and out["t2i_r1"] == 100.0 and out["r_mean"] == 100.0
    rev = retrieval_recall(img, img.roll(1, 0), torch.arange(16))
    assert rev["i2t_r1"] == 0.0


def test_hardneg_stats_matches_hand_computed_reference():
    from lightning_modules.metrics import hardneg_stats, mean_offdiag_cos

    # 2 samples in 2-D; unit vectors so dot products are cosines computed by hand below.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    neg = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    owner = torch.tensor([0, 0, 1])
    kinds = ["compositional/position", "compositional/swap_objects", "compositional/position"]
    out = hardneg_stats(img, txt, neg, owner, kinds)
    # position: sample 0: img0·txt0 = 0.8 > img0·neg0 = 0.6 (correct), cos(txt0, neg0) = 0.48 + 0.48 = 0.96;
    #           sample 1: img1·txt1 = 0.8 < img1·neg2 = 1.0 (wrong), cos(txt1, neg2) = 0.8.
    torch.testing.assert_close(out["compositional/position"], torch.tensor([1.0, 0.96 + 0.8, 2.0]))
    # swap_objects: sample 0: 0.8 < img0·neg1 = 1.0 (wrong), cos(txt0, neg1) = 0.8.
    torch.testing.assert_close(out["compositional/swap_objects"], torch.tensor([0.0, 0.8, 1.0]))
    # A tie is not a win (strictly higher).
    tie = hardneg_stats(img, txt, txt[:1].clone(), torch.tensor([0]), ["k"])
    assert tie["k"][0] == 0
    assert hardneg_stats(img, txt, neg[:0], owner[:0], []) == {}
    # Mean off-diagonal cosine: rows (1,0), (0,1), (0.6,0.8): pairs 0, 0.6, 0.8 -> mean 1.4 / 3.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    torch.testing.assert_close(mean_offdiag_cos(x), torch.tensor(1.4 / 3))
