"""Retrieval on the synthetic world's val (or test) split, broken down by the caption's claim kind (relation,
exists, count, negation): where a hard-negative recipe loses retrieval (README "Relational binding").

    python benchmarks/retrieval_by_kind.py runs/a/checkpoints/last.ckpt runs/b/checkpoints/last.ckpt [--split val]

Per checkpoint and kind: the number of captions, t2i R@1 (the caption's own image first among all images of the
split), i2t R@1 (the image's own caption first among all captions), how many captions of the split are word-for-word
the same as it (an exact duplicate makes R@1 ambiguous), the mean cosine of a caption with its own image and its
separation d' = (own cosine − mean cosine with the other images) / their standard deviation, and the mean cosine
between two random captions of that kind and between two random images whose captions are of that kind (how tightly
the tower clusters them); and the mean cosine between an attribute-list caption and the same list in another order
(order that means nothing). Prints a JSON line per checkpoint and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.sources.synthetic import SyntheticWorldSource, world_from_run_config  # noqa: E402
from datamodules.world.claims import Exists, parse_claim  # noqa: E402
from lightning_modules.inference import load_checkpoint  # noqa: E402
from lightning_modules.search import load_scorer  # noqa: E402


def mean_offdiag(x: torch.Tensor) -> float:
    if len(x) < 2:
        return float("nan")
    sim = x @ x.T
    n = len(x)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def by_kind(ckpt: str, split: str) -> dict:
    _, _, run_cfg = load_checkpoint(ckpt)
    world, size = world_from_run_config(run_cfg)
    if world is None:
        raise ValueError(f"{ckpt}: not trained on the synthetic world (no data.source.world in its config)")
    n = int(run_cfg["data"]["source"].get(f"num_{split}", 1000))
    src = SyntheticWorldSource(world, num_train=0, num_val=n, num_test=n, image_size=size)
    recs = src.records(split)
    scorer = load_scorer(ckpt)
    img = scorer.encode_images([r.image.load() for r in recs])
    txt = scorer.encode_texts([r.caption for r in recs])
    sim = txt @ img.T  # [captions, images], caption i belongs to image i
    idx = torch.arange(len(recs))
    t2i = (sim.argmax(1) == idx).float()
    i2t = (sim.argmax(0) == idx).float()
    off = ~torch.eye(len(recs), dtype=torch.bool)
    other_mean = (sim * off).sum(1) / off.sum(1)
    other_std = ((sim - other_mean[:, None]).square() * off).sum(1).div(off.sum(1) - 1).sqrt()
    dup = Counter(r.caption for r in recs)
    kinds = [r.meta["claim_kind"] for r in recs]
    out: dict = {"ckpt": ckpt, "split": split, "all": {"n": len(recs)}}
    out["all"] |= {"t2i_r1": 100 * float(t2i.mean()), "i2t_r1": 100 * float(i2t.mean())}
    for k in sorted(set(kinds)):
        m = torch.tensor([x == k for x in kinds])
        out[k] = {
            "n": int(m.sum()),
            "t2i_r1": 100 * float(t2i[m].mean()),
            "i2t_r1": 100 * float(i2t[m].mean()),
            "duplicated": sum(dup[r.caption] > 1 for r, keep in zip(recs, m) if keep),
            "txt_cos": mean_offdiag(txt[m]),
            # separation of a caption's own image from the others: (own cosine - mean other) / std of the others
            "pos_cos": float(sim.diagonal()[m].mean()),
            "d_prime": float(((sim.diagonal() - other_mean) / other_std)[m].mean()),
            "img_cos": mean_offdiag(img[m]),
        }
    # Order sensitivity where order means nothing: an attribute list and the same list in another order (lists of
    # at least two different items, so that another order exists).
    lists = [(r.caption, parse_claim(r.caption)) for r in recs if r.meta["claim_kind"] == "exists"]
    lists = [(c, cl) for c, cl in lists if isinstance(cl, Exists) and len(set(cl.descs)) >= 2]
    rng = random.Random(0)
    perm = []
    for _, cl in lists:
        d = list(cl.descs)
        while d == list(cl.descs):
            rng.shuffle(d)
        perm.append(Exists(tuple(d)).text())
    a, b = scorer.encode_texts([c for c, _ in lists]), scorer.encode_texts(perm)
    out["exists"]["list_order_cos"] = float((a * b).sum(-1).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpts", nargs="+")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    args = ap.parse_args()
    rows = []
    for c in args.ckpts:
        r = by_kind(c, args.split)
        print(json.dumps(r), flush=True)
        rows.append(r)
    kinds = [k for k in rows[0] if k not in ("ckpt", "split", "all")]
    print(
        "\n| run | all t2i / i2t | "
        + " | ".join(f"{k} (n) t2i / i2t · txt cos / img cos" for k in kinds)
        + " |"
    )
    print("|---|---|" + "---|" * len(kinds))
    for r in rows:
        name = Path(r["ckpt"]).parent.parent.name
        cells = [
            f"({r[k]['n']}) {r[k]['t2i_r1']:.1f} / {r[k]['i2t_r1']:.1f} · {r[k]['txt_cos']:.2f} / {r[k]['img_cos']:.2f}"
            for k in kinds
        ]
        print(f"| {name} | {r['all']['t2i_r1']:.1f} / {r['all']['i2t_r1']:.1f} | " + " | ".join(cells) + " |")
    print("\nown-image cosine and separation d' = (own - mean other) / std other, per kind:")
    for r in rows:
        name = Path(r["ckpt"]).parent.parent.name
        print(f"  {name}: " + ", ".join(f"{k} {r[k]['pos_cos']:.3f} / {r[k]['d_prime']:.2f}" for k in kinds))
    print("\nmean cosine between an attribute list and the same list reordered (exists captions, 2+ items):")
    for r in rows:
        print(f"  {Path(r['ckpt']).parent.parent.name}: {r['exists']['list_order_cos']:.3f}")


if __name__ == "__main__":
    main()
