"""Text-tower trimming (`ModelSpec.trim_text`, `TrimmedTextCLIP`): one training step of a tiny CLIP with and without
it, on real synthetic-world captions, interleaved round-robin in one run (median of the repeats).

    python benchmarks/text_trim.py                        # tiny-vit, the shape of an `experiment=hardneg` step
    python benchmarks/text_trim.py --captions 64 --images 64   # the shape of a plain contrastive step
    # a GPU, ViT-B/32 at batch 256 with `experiment=hardneg` (2.1 images and 3.1 captions per sample), bf16:
    python benchmarks/text_trim.py --device cuda --precision bf16-mixed --model ViT-B-32 --images 538 --captions 794

The step: encode_image on `--images` random images, encode_text on `--captions` world captions (relation-dense mix,
as `data=synthetic`), contrastive loss over the first min(images, captions) pairs, backward, AdamW. Both models
start from the same weights; the script also reports the largest feature difference between them. The trimmed
model gets its tokens as the training loader makes them (padding columns dropped on the host, `trim_padding`, then
moved), the full model the full context. On a GPU each step is synchronised before the clock stops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from datamodules.dataset import trim_padding
from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World
from lightning_modules.model_factory import ModelSpec, TrimmedTextCLIP

ROOT = Path(__file__).resolve().parents[1]
# the caption mix of data=synthetic (relation-dense), read from its config
DENSE = dict(OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml").source.world.caption_mix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-vit")
    # hardneg on the default world: 64 positives + ~1.2 re-rendered images each, ~3 captions per positive more
    ap.add_argument("--images", type=int, default=141)
    ap.add_argument("--captions", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    spec = ModelSpec(name=args.model)
    models = {
        "trimmed": spec.build().to(dev),
        "full": ModelSpec(name=args.model, trim_text=False).build().to(dev),
    }
    models["full"].load_state_dict(models["trimmed"].state_dict())
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    src = SyntheticWorldSource(
        world=World(seed=0, min_objects=2, caption_mix=DENSE), num_train=4096, num_val=0
    )
    caps = [r.caption for r in src.records("train")]
    tok = spec.tokenizer()
    size = spec.image_size
    host = [
        tok(caps[i * args.captions : (i + 1) * args.captions]) for i in range(len(caps) // args.captions)
    ][:8]
    batches = [
        (
            torch.randn(args.images, 3, size, size, device=dev),
            {"full": t.to(dev), "trimmed": trim_padding(t, TrimmedTextCLIP.MULTIPLE).to(dev)},
        )
        for t in host
    ]
    with torch.no_grad():
        texts = batches[0][1]
        diff = (
            (models["trimmed"].encode_text(texts["trimmed"]) - models["full"].encode_text(texts["full"]))
            .abs()
            .max()
        )
    used = [int((t != 0).any(0).nonzero().max()) + 1 for t in host]
    bf16 = args.precision == "bf16-mixed"

    def step(name: str, i: int) -> float:
        model, opt = models[name], opts[name]
        images, texts = batches[i % len(batches)]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            img = F.normalize(model.encode_image(images), dim=-1)
            txt = F.normalize(model.encode_text(texts[name]), dim=-1)
        n = min(len(img), len(txt))
        logits = model.logit_scale.exp() * img[:n].float() @ txt[:n].float().T
        labels = torch.arange(n, device=dev)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for name in models:  # warm-up
        step(name, 0)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.repeats):
        for name in models:
            times[name].append(step(name, i))
    med = {k: statistics.median(v) for k, v in times.items()}
    line = json.dumps(
        {
            "model": args.model,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "precision": args.precision,
            "images": args.images,
            "captions": args.captions,
            "threads": torch.get_num_threads(),
            "context": models["full"].positional_embedding.shape[0],
            "used_positions_median": statistics.median(used),
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "trimmed_over_full": round(med["trimmed"] / med["full"], 3),
            "max_text_feature_diff": float(diff),
        }
    )
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
