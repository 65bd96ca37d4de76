"""Gate and repair quality on the noisy synthetic world, against ground truth.

    make scorers                                   # trains + exports the tiny ViT and ResNet scorers once
    python benchmarks/gate_quality.py --num 3000 --mismatch 0.1 --captioner-error 0.1

Calibrates the gate on clean val pairs (threshold at a target false-accept rate on shuffled pairs), runs the
preprocessing pipeline on noisy training records and reports: precision / recall of the gate for rejecting
mismatched pairs (first pass), the share of repaired pairs whose new caption is true of the scene, the accuracy of
captions written for lone images, and the share of true pairs in the final clean manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datamodules.gate import Gate, GateScorer
from datamodules.preprocess.pipeline import Preprocessor
from datamodules.preprocess.symbolic import RendererT2I, SceneCaptioner
from datamodules.sources.noisy_synthetic import NoisySyntheticSource
from datamodules.world import World
from datamodules.world.claims import holds, parse_claim
from lightning_modules.model_factory import ModelSpec


def true_pair(r, world) -> bool:
    claim = parse_claim(r.caption)
    scene = getattr(r.image, "scene", None)
    return claim is not None and scene is not None and holds(claim, scene, world.relation_margin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=3000)
    ap.add_argument("--calib", type=int, default=1000)
    ap.add_argument("--mismatch", type=float, default=0.1)
    ap.add_argument("--lone-image", type=float, default=0.05)
    ap.add_argument("--lone-text", type=float, default=0.05)
    ap.add_argument("--captioner-error", type=float, default=0.1)
    ap.add_argument("--far", type=float, default=0.05)
    ap.add_argument("--combine", default="mean")
    ap.add_argument("--scorers", default="data/scorers")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gate_quality"))
    args = ap.parse_args()
    world = World()
    gate = Gate(
        [
            GateScorer(
                "vit", ModelSpec("tiny-vit", pretrained=f"{args.scorers}/tiny-vit.safetensors"), "vit"
            ),
            GateScorer("cnn", ModelSpec("tiny-rn", pretrained=f"{args.scorers}/tiny-rn.safetensors"), "cnn"),
        ],
        combine=args.combine,
    )
    src = NoisySyntheticSource(
        world,
        num_train=args.num,
        num_val=args.calib,
        num_test=0,
        mismatch_rate=args.mismatch,
        lone_image_rate=args.lone_image,
        lone_text_rate=args.lone_text,
    )
    calib = [r for r in src.clean.records("val")]
    cal = gate.calibrate(
        [r.image.load() for r in calib], [r.caption for r in calib], args.out, target_far=args.far
    )
    gate.threshold = cal["suggested_threshold"]
    recs = src.records("train")
    pre = Preprocessor(gate, captioner=SceneCaptioner(world, args.captioner_error), t2i=RendererT2I(world))
    out = pre.run(recs, args.out / "clean")
    pairs = [r for r in recs if r.meta["noise"] in ("clean", "mismatched")]
    rejected = [r for r in pairs if not r.meta.get("gate_first_pass", True)]
    mism = [r for r in pairs if r.meta["noise"] == "mismatched"]
    tp = sum(r.meta["noise"] == "mismatched" for r in rejected)
    repaired = [r for r in out["kept"] if r.meta.get("produced") == "repaired"]
    captioned = [r for r in out["kept"] if r.meta.get("produced") == "captioned"]
    kept = out["kept"]
    res = {
        "gate_threshold": gate.threshold,
        "calibration": cal,
        "gate_reject_precision": tp / max(len(rejected), 1),
        "gate_reject_recall": tp / max(len(mism), 1),
        "rejected_first_pass": len(rejected),
        "mismatched": len(mism),
        "repaired_kept": len(repaired),
        "repaired_correct": sum(true_pair(r, world) for r in repaired) / max(len(repaired), 1),
        "captioned_kept": len(captioned),
        "captioned_correct": sum(true_pair(r, world) for r in captioned) / max(len(captioned), 1),
        "input_true_pair_rate": sum(r.meta["noise"] == "clean" for r in pairs) / max(len(pairs), 1),
        "clean_manifest_true_pair_rate": sum(true_pair(r, world) for r in kept) / max(len(kept), 1),
        "report": out["report"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gate_quality.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k not in ("calibration", "report")}, indent=2))
    print("report:", json.dumps(out["report"]["counts"]), json.dumps(out["report"]["dropped"]))


if __name__ == "__main__":
    main()
