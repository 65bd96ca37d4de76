"""Text-tower trimming (`ModelSpec.trim_text`, `TrimmedTextCLIP`): one training step of a tiny CLIP with and without
it, on real synthetic-world captions, interleaved round-robin in one run (median of the repeats).

    python benchmarks/text_trim.py                        # tiny-vit, the shape of an `experiment=hardneg` step
    python benchmarks/text_trim.py --captions 64 --images 64   # the shape of a plain contrastive step

The step: encode_image on `--images` random images, encode_text on `--captions` world captions (relation-dense mix,
as `data=synthetic`), contrastive loss over the first min(images, captions) pairs, backward, AdamW. Both models
start from the same weights; the script also reports the largest feature difference between them.
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

from datamodules.sources.synthetic import SyntheticWorldSource
from datamodules.world import World
from lightning_modules.model_factory import ModelSpec

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
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = ModelSpec(name=args.model)
    models = {"trimmed": spec.build(), "full": ModelSpec(name=args.model, trim_text=False).build()}
    models["full"].load_state_dict(models["trimmed"].state_dict())
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    src = SyntheticWorldSource(
        world=World(seed=0, min_objects=2, caption_mix=DENSE), num_train=4096, num_val=0
    )
    caps = [r.caption for r in src.records("train")]
    tok = spec.tokenizer()
    size = spec.image_size
    batches = [
        (torch.randn(args.images, 3, size, size), tok(caps[i * args.captions : (i + 1) * args.captions]))
        for i in range(len(caps) // args.captions)
    ]
    with torch.no_grad():
        diff = (
            (models["trimmed"].encode_text(batches[0][1]) - models["full"].encode_text(batches[0][1]))
            .abs()
            .max()
        )
    used = [int((t != 0).any(0).nonzero().max()) + 1 for _, t in batches]

    def step(name: str, i: int) -> float:
        model, opt = models[name], opts[name]
        images, texts = batches[i % len(batches)]
        t0 = time.perf_counter()
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(texts), dim=-1)
        n = min(len(img), len(txt))
        logits = model.logit_scale.exp() * img[:n] @ txt[:n].T
        labels = torch.arange(n)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for name in models:  # warm-up
        step(name, 0)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.repeats):
        for name in models:
            times[name].append(step(name, i))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "model": args.model,
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
    )


if __name__ == "__main__":
    main()
