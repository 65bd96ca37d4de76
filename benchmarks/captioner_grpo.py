"""GRPO of the SFT captioner with the Reflection-V-style reward (lightning_modules/reflection/grpo.py), then caption
truth and the attention late/early ratio of greedy captions on test scenes, before vs after.

    python benchmarks/captioner_grpo.py logs/captioner/sft --scorer data/scorers/tiny-vit.safetensors --steps 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from datamodules.negatives.text_rules import TextRules  # noqa: E402
from datamodules.world import World  # noqa: E402
from lightning_modules.inference import ClipScorer  # noqa: E402
from lightning_modules.model_factory import ModelSpec  # noqa: E402
from lightning_modules.reflection.attention import measure_response  # noqa: E402
from lightning_modules.reflection.captioner import (  # noqa: E402
    PROMPT,
    generate_captions,
    load_captioner,
    synthetic_pairs,
    truth_rate,
)
from lightning_modules.reflection.grpo import CaptionerGRPO, CaptionReward, image_batches  # noqa: E402


def evaluate(model, processor, images, scenes, world, n_att: int = 60) -> dict:
    model.eval()
    caps = generate_captions(model, processor, images)
    res = truth_rate(caps, scenes, world)
    ratios, shares = [], []
    for im, c in list(zip(images, caps))[:n_att]:
        if c:
            m = measure_response(model, processor, im, PROMPT, c)
            ratios.append(float(m["ratio"]))
            shares.append(float(m["share_mean"]))
    res["attention_late_early_ratio"] = sum(ratios) / max(len(ratios), 1)
    res["attention_share"] = sum(shares) / max(len(shares), 1)
    res["examples"] = caps[:3]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--scorer", default="data/scorers/tiny-vit.safetensors")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--w-sim", type=float, default=1.0)
    ap.add_argument("--w-margin", type=float, default=1.0)
    ap.add_argument("--w-att", type=float, default=0.5)
    ap.add_argument(
        "--w-truth",
        type=float,
        default=0.0,
        help="oracle truth term (holds() on the scene graph): a diagnostic upper bound, not a method",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reflection" / "grpo.json")
    args = ap.parse_args()
    L.seed_everything(0)
    world = World(seed=0)
    model, processor = load_captioner(args.model)
    spec = ModelSpec(name="tiny-vit", pretrained=args.scorer)
    scorer = ClipScorer(spec.build().eval(), spec.image_transform(), spec.tokenizer())
    te_img, _, te_scenes = synthetic_pairs(world, "test", args.test)
    before = evaluate(model, processor, te_img, te_scenes, world)
    tr_img, _, tr_scenes = synthetic_pairs(world, "train", 4000, offset=500_000)
    module = CaptionerGRPO(
        model,
        processor,
        CaptionReward(
            scorer,
            TextRules(),
            w_sim=args.w_sim,
            w_margin=args.w_margin,
            w_att=args.w_att,
            w_truth=args.w_truth,
            world=world,
        ),
        group_size=args.group,
        lr=args.lr,
        beta=args.beta,
        world=world,
    )
    logger = L.pytorch.loggers.CSVLogger(str(args.out.parent), name="grpo_csv", version="")
    trainer = L.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=image_batches(tr_img, tr_scenes, args.batch))
    wall = time.perf_counter() - t0
    after = evaluate(module.policy, processor, te_img, te_scenes, world)
    res = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "before": before,
        "after_grpo": after,
        "train_seconds": round(wall, 1),
        "last_logged": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
