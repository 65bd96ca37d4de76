"""Relational-binding probe: does a CLIP learn "A left of B" vs "B left of A" at all, and what makes it learn?

A small, fast training loop outside Lightning (same open_clip model, same world, same logit-scale clamp), on a
relation-only world: 2 objects per scene, every caption a spatial relation. Per step: the plain contrastive loss +
a per-sample (1+2)-way image -> [caption, object-swapped caption, relation-replaced caption] term
(`--w_txt`), optionally caption -> [own image, positions-exchanged re-render] (`--w_img`), a text-only paraphrase
term (caption vs its converse "B right of A" as positive, the swaps as negatives; `--w_para`) and intra-modal
repulsion of swapped twins (`--w_intra_txt`, `--w_intra_img`). Every 100 steps it prints one JSON line with, on
training scenes and on unseen scenes:
  acc_swap / acc_repl   own image prefers its caption over the swapped / replaced caption (chance 0.5)
  acc_imgswap           caption prefers its image over the positions-exchanged re-render (chance 0.5)
  cos_txt / cos_img     cosine between a caption and its swap / an image and its re-render (1 = blind to order)
  r1                    image -> text R@1 among the 500 scenes

    python benchmarks/relation_probe.py --pos learnable --w_img 1 --tag learnable
    python benchmarks/relation_probe.py --pos sin_cos_2d --w_img 1 --tag sincos

Results used in the README: benchmarks/results/relations/probe/*.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.world import World  # noqa: E402
from datamodules.world.claims import OPPOSITE, RELATIONS, Relation, holds, relation_claim  # noqa: E402
from datamodules.world.render import render_scene  # noqa: E402
from datamodules.world.scene import Scene, swap_attribute  # noqa: E402
from lightning_modules.clip_module import param_groups  # noqa: E402
from lightning_modules.model_factory import ModelSpec  # noqa: E402

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def swap_positions(scene: Scene, claim: Relation, margin: float) -> Scene | None:
    """The scene with the two named objects' positions exchanged (the caption becomes false), or None."""
    objs = scene.objects
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if i != j and claim.a.matches(a) and claim.b.matches(b):
                s = swap_attribute(swap_attribute(scene, i, j, "x"), i, j, "y")
                if not holds(claim, s, margin):
                    return s
    return None


def make_split(world: World, split: str, n: int, size: int) -> dict[str, list]:
    out: dict[str, list] = {k: [] for k in ("img", "img_swap", "cap", "swap", "repl", "conv")}
    i = 0
    while len(out["cap"]) < n:
        rng = random.Random(f"probe-{split}-{i}")
        i += 1
        scene = world.sample_scene(rng, heldout_ok=True)
        c = relation_claim(scene, rng, world, heldout_ok=True)
        if c is None:
            continue
        swap = Relation(c.b, c.rel, c.a)
        repl = [replace(c, rel=r) for r in RELATIONS if r != c.rel]
        repl = [r for r in repl if not holds(r, scene, world.relation_margin)]
        other = swap_positions(scene, c, world.relation_margin)
        if holds(swap, scene, world.relation_margin) or not repl or other is None:
            continue
        out["img"].append(np.asarray(render_scene(scene, size)))
        out["img_swap"].append(np.asarray(render_scene(other, size)))
        out["cap"].append(c.text())
        out["swap"].append(swap.text())
        out["repl"].append(rng.choice(repl).text())
        out["conv"].append(Relation(c.b, OPPOSITE[c.rel], c.a).text())
    return out


def tensors(d: dict[str, list], tok) -> dict[str, torch.Tensor]:
    def img(x):
        return ((torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2).float() / 255) - MEAN) / STD

    return {k: img(v) if k.startswith("img") else tok(v) for k, v in d.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument(
        "--pos", default="learnable", choices=["learnable", "sin_cos_2d"], help="ViT position code"
    )
    ap.add_argument("--patch", type=int, default=0, help="override the ViT patch size (0: the model's)")
    ap.add_argument("--max_objects", type=int, default=2, help="objects per scene: 2..max_objects")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--n", type=int, default=16000, help="training scenes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--w_con", type=float, default=1.0)
    ap.add_argument("--w_txt", type=float, default=1.0)
    ap.add_argument("--w_img", type=float, default=0.0)
    ap.add_argument("--w_para", type=float, default=0.0)
    ap.add_argument("--w_intra_txt", type=float, default=0.0)
    ap.add_argument("--w_intra_img", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="probe")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "relations" / "probe")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.time()
    spec = ModelSpec(name=a.model)
    cfg = copy.deepcopy(spec.config)
    if "patch_size" in cfg["vision_cfg"] and cfg["vision_cfg"]["patch_size"]:
        cfg["vision_cfg"]["pos_embed_type"] = a.pos
        cfg["vision_cfg"]["patch_size"] = a.patch or cfg["vision_cfg"]["patch_size"]
    model = open_clip.CLIP(**cfg)
    tok = spec.tokenizer()
    world = World(min_objects=2, max_objects=a.max_objects)
    size = cfg["vision_cfg"]["image_size"]
    tr = tensors(make_split(world, "train", a.n, size), tok)
    va = tensors(make_split(world, "val", 500, size), tok)
    opt = torch.optim.AdamW(param_groups(model, a.wd), lr=a.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps)))
    )

    def enc(images, texts):
        return F.normalize(model.encode_image(images), dim=-1), F.normalize(model.encode_text(texts), dim=-1)

    @torch.no_grad()
    def measure(d, k=500):
        model.eval()
        i, t = enc(d["img"][:k], d["cap"][:k])
        i2, tsw = enc(d["img_swap"][:k], d["swap"][:k])
        trp = F.normalize(model.encode_text(d["repl"][:k]), dim=-1)
        pos = (i * t).sum(-1)
        model.train()
        return {
            "acc_swap": (pos > (i * tsw).sum(-1)).float().mean().item(),
            "acc_repl": (pos > (i * trp).sum(-1)).float().mean().item(),
            "acc_imgswap": (pos > (i2 * t).sum(-1)).float().mean().item(),
            "cos_txt": (t * tsw).sum(-1).mean().item(),
            "cos_img": (i * i2).sum(-1).mean().item(),
            "r1": ((i @ t.T).argmax(1) == torch.arange(len(i))).float().mean().item(),
        }

    a.out.mkdir(parents=True, exist_ok=True)
    log_path = a.out / f"{a.tag}.jsonl"
    log = log_path.open("w")
    g = torch.Generator().manual_seed(a.seed)
    b, n = a.batch, len(tr["cap"])
    zeros = torch.zeros(b, dtype=torch.long)
    for step in range(a.steps + 1):
        if step % 100 == 0:
            train_m = measure({k: v[:500] for k, v in tr.items()})
            row = {
                "tag": a.tag,
                "step": step,
                "seconds": round(time.time() - t0),
                "args": vars(a) | {"out": None},
            }
            row |= {"train": train_m, "unseen": measure(va)}
            print(json.dumps(row), flush=True)
            log.write(json.dumps(row) + "\n")
        if step == a.steps:
            break
        idx = torch.randint(0, n, (b,), generator=g)
        with_img = bool(a.w_img or a.w_intra_img)
        images = torch.cat([tr["img"][idx]] + ([tr["img_swap"][idx]] if with_img else []))
        texts = [tr["cap"][idx], tr["swap"][idx], tr["repl"][idx]] + ([tr["conv"][idx]] if a.w_para else [])
        img, txt = enc(images, torch.cat(texts))
        s = model.logit_scale.exp()
        i, t, tsw, trp = img[:b], txt[:b], txt[b : 2 * b], txt[2 * b : 3 * b]
        labels = torch.arange(b)
        loss = a.w_con * (F.cross_entropy(s * i @ t.T, labels) + F.cross_entropy(s * t @ i.T, labels)) / 2
        three = torch.stack([(i * t).sum(-1), (i * tsw).sum(-1), (i * trp).sum(-1)], 1)
        loss = loss + a.w_txt * F.cross_entropy(s * three, zeros)
        if with_img:
            i2 = img[b:]
            two = torch.stack([(i * t).sum(-1), (i2 * t).sum(-1)], 1)
            loss = loss + a.w_img * F.cross_entropy(s * two, zeros)
            loss = loss + a.w_intra_img * (i * i2).sum(-1).clamp_min(0).mean()
        if a.w_para:
            tc = txt[3 * b :]
            para = torch.stack([(t * tc).sum(-1), (t * tsw).sum(-1), (t * trp).sum(-1)], 1)
            loss = loss + a.w_para * F.cross_entropy(s * para, zeros)
        if a.w_intra_txt:
            loss = (
                loss
                + a.w_intra_txt * ((t * tsw).sum(-1).clamp_min(0) + (t * trp).sum(-1).clamp_min(0)).mean() / 2
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    print(f"wrote {log_path}")


if __name__ == "__main__":
    main()
