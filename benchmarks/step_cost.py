"""Step cost of hard negatives and throughput of the cheap generators, measured side by side in one run.

    python benchmarks/step_cost.py                 # tiny-vit, batch 64, CPU
    python benchmarks/step_cost.py --model ViT-B-32 --image-size 224 --device cuda --batch 256 --precision bf16

Part 1: one training step (one encode_image + one encode_text call, contrastive + hard-negative losses, backward,
AdamW) with K extra captions and M extra images per sample, relative to the plain CLIP step at the same batch size.
Configurations are interleaved round-robin so drift and contention hit them equally; the median is reported.
Part 2: single-process (one core) throughput of each cheap generator on synthetic-world records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from datamodules.negatives.editors.renderer import RendererEditor
from datamodules.negatives.image_edit import ImageEdit
from datamodules.negatives.patch_shuffle import PatchShuffle
from datamodules.negatives.text_rules import TextRules
from datamodules.negatives.trigram_shuffle import TrigramShuffle
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World
from lightning_modules.losses.base import LossInputs, LossSum
from lightning_modules.losses.contrastive import ContrastiveLoss
from lightning_modules.losses.hard_negative import HardNegativeImage, HardNegativeText
from lightning_modules.model_factory import ModelSpec


def step_fn(
    model, opt, loss_fn, b: int, k: int, m: int, size: int, ctx: int, device: str, precision: str = "fp32"
):
    images = torch.randn(b * (1 + m), 3, size, size, device=device)
    texts = torch.randint(1, 49000, (b * (1 + k), ctx), device=device)
    texts[:, -1] = 49407  # EOT (argmax pooling)
    owner_t = torch.arange(b, device=device).repeat_interleave(k)
    owner_i = torch.arange(b, device=device).repeat_interleave(m)

    autocast = (
        (lambda: torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )

    def step():
        with autocast():  # bf16: encoders in bf16, features and losses in fp32 (as bf16-mixed training)
            img = F.normalize(model.encode_image(images), dim=-1)
            txt = F.normalize(model.encode_text(texts), dim=-1)
        img, txt = img.float(), txt.float()
        x = LossInputs(
            img_BD=img[:b],
            txt_BD=txt[:b],
            logit_scale=model.logit_scale.exp(),
            img_neg_MD=img[b:],
            txt_neg_ND=txt[b:],
            img_neg_owner_M=owner_i,
            txt_neg_owner_N=owner_t,
            img_neg_pair_M=torch.full((b * m,), -1, device=device),
            img_neg_kind=["c"] * (b * m),
            txt_neg_kind=["c"] * (b * k),
        )
        out = loss_fn(x)
        total = sum(v for n, v in out.items() if n.endswith("_loss"))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def bench_steps(args) -> dict:
    spec = ModelSpec(
        name=args.model, model_kwargs={"force_image_size": args.image_size} if args.image_size else {}
    )
    model = spec.build().to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = LossSum(
        {"c": ContrastiveLoss(), "t": HardNegativeText(kinds=None), "i": HardNegativeImage(kinds=None)}
    )
    size, ctx = args.image_size or spec.image_size, spec.config["text_cfg"]["context_length"]
    configs = {
        "baseline": (0, 0),
        "+1 caption": (1, 0),
        "+2 captions": (2, 0),
        "+1 image": (0, 1),
        "+2 images": (0, 2),
        "+1 caption +1 image": (1, 1),
    }
    steps = {
        n: step_fn(model, opt, loss_fn, args.batch, k, m, size, ctx, args.device, args.precision)
        for n, (k, m) in configs.items()
    }
    for fn in steps.values():  # warm-up
        for _ in range(2):
            fn()
    times = {n: [] for n in configs}
    for _ in range(args.repeats):
        for n, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
    base = statistics.median(times["baseline"])
    return {
        n: {"median_s": statistics.median(t), "ratio": statistics.median(t) / base} for n, t in times.items()
    }


def bench_generators(n: int) -> dict:
    src = SyntheticWorldSource(World(), num_train=n, num_val=0, num_test=0)
    recs = src.records("train")
    images = [r.image.load() for r in recs]
    gens = {
        "trigram_shuffle": TrigramShuffle(),
        "text_rules (2 per caption)": TextRules(num_per_caption=2),
        "patch_shuffle": PatchShuffle(),
        "image_edit renderer (T'_C + I'_C)": ImageEdit(TextRules(), RendererEditor()),
    }
    out = {}
    t0 = time.perf_counter()
    for r in recs:
        r.image.load()
    render = n / (time.perf_counter() - t0)
    out["render positive image (baseline loader work)"] = {"items_per_s": render, "made": n}
    for name, g in gens.items():
        g.bind(leak_filter=src.leaks, vocabulary=src.vocabulary)
        made = 0
        t0 = time.perf_counter()
        for r, im in zip(recs, images):
            made += len(g(r, im, random.Random(r.id)))
        dt = time.perf_counter() - t0
        out[name] = {"items_per_s": n / dt, "negatives_per_s": made / dt, "made": made}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=None, help="default: the model's")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--gen-items", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/step_cost.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    res = {
        "config": vars(args) | {"out": str(args.out), "threads": torch.get_num_threads()},
        "steps": bench_steps(args),
        "generators": bench_generators(args.gen_items),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(
        f"step cost, {args.model}, batch {args.batch}, {args.device}, {args.precision} "
        f"(median of {args.repeats}, interleaved)"
    )
    print("| configuration | step (ms) | × baseline |\n|---|---:|---:|")
    for n, r in res["steps"].items():
        print(f"| {n} | {1000 * r['median_s']:.1f} | {r['ratio']:.2f} |")
    print("\ncheap generators, one process (one core)")
    print("| generator | records/s | negatives/s |\n|---|---:|---:|")
    for n, r in res["generators"].items():
        print(f"| {n} | {r['items_per_s']:.0f} | {r.get('negatives_per_s', float('nan')):.0f} |")


if __name__ == "__main__":
    main()
