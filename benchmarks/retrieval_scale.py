"""Retrieval metrics at COCO-5k scale (5,000 images × 25,000 captions, random features): the chunked implementation
used by evaluate.py vs a naive one (full similarity matrix, full argsort, per-query Python loop). Each runs in its
own subprocess so peak memory (max RSS) is measured separately; both results are checked equal.

    python benchmarks/retrieval_scale.py [--images 5000 --per-image 5 --dim 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def features(n_img: int, per: int, dim: int):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n_img, dim, generator=g), dim=-1)
    txt_img = torch.arange(n_img).repeat_interleave(per)
    txt = F.normalize(img[txt_img] + 2.0 * torch.randn(n_img * per, dim, generator=g) / dim**0.5 * 8, dim=-1)
    return img, txt, txt_img


def naive(img, txt, txt_img, ks=(1, 5, 10)):
    sim = img @ txt.T  # [I, T] in memory at once
    order = sim.argsort(dim=1, descending=True)
    out = {}
    for k in ks:
        hits = 0
        for i in range(img.shape[0]):
            top = set(order[i, :k].tolist())
            hits += any(t in top for t in (txt_img == i).nonzero().flatten().tolist())
        out[f"i2t_r{k}"] = 100.0 * hits / img.shape[0]
    order_t = sim.T.argsort(dim=1, descending=True)
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * (order_t[:, :k] == txt_img[:, None]).any(1).float().mean().item()
    return out


def worker(impl: str, n_img: int, per: int, dim: int) -> None:
    from lightning_modules.metrics import retrieval_recall

    img, txt, txt_img = features(n_img, per, dim)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = retrieval_recall(img, txt, txt_img) if impl == "chunked" else naive(img, txt, txt_img)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = {k: v for k, v in res.items() if k != "r_mean"}
    print(
        json.dumps(
            {
                "impl": impl,
                "seconds": dt,
                "peak_rss_mb": peak / 1024,
                "extra_rss_mb": (peak - base) / 1024,
                "metrics": res,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--worker", choices=["chunked", "naive"])
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.images, args.per_image, args.dim)
        return
    runs = {}
    for impl in ("chunked", "naive"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            impl,
            "--images",
            str(args.images),
            "--per-image",
            str(args.per_image),
            "--dim",
            str(args.dim),
        ]
        runs[impl] = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        )
    # The two compute the same similarities with different matmul orders; a last-bit difference can flip a
    # near-tie, so allow at most 2 queries of difference (reported).
    worst = 0.0
    for k, v in runs["chunked"]["metrics"].items():
        n = args.images if k.startswith("i2t") else args.images * args.per_image
        diff = abs(v - runs["naive"]["metrics"][k]) * n / 100
        assert diff <= 2.01, (k, v, runs["naive"]["metrics"][k])
        worst = max(worst, diff)
    print(
        f"{args.images} images x {args.images * args.per_image} captions, dim {args.dim}; "
        f"metrics agree (largest difference: {worst:.0f} queries, float rounding of near-ties)"
    )
    print("| implementation | seconds | peak RSS (MB) | RSS added by the metric (MB) |\n|---|---:|---:|---:|")
    for impl, r in runs.items():
        print(f"| {impl} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['extra_rss_mb']:.0f} |")
    c, n = runs["chunked"], runs["naive"]
    print(
        f"ratio naive/chunked: time {n['seconds'] / c['seconds']:.1f}x, added memory "
        f"{n['extra_rss_mb'] / max(c['extra_rss_mb'], 1):.1f}x"
    )


if __name__ == "__main__":
    main()
