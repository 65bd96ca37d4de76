"""Gate and repair quality on the noisy synthetic world, against ground truth.

    make scorers                                   # trains + exports the tiny ViT and ResNet scorers once
    python benchmarks/gate_quality.py --num 2000 preprocess.raw.mismatch_rate=0.1

Runs the preprocessing config (conf/preprocess.yaml; any Hydra override after the options) on the noisy training
records — calibration on raw val pairs (threshold at the target false-accept rate on shuffled pairs), stages, gate,
look-again repair — and reports against the ground truth the world keeps: precision / recall of the gate for
rejecting mismatched pairs (first pass), the share of repaired pairs whose caption is true of the scene, the accuracy
of captions written for lone images and of images drawn for lone texts, and the share of true pairs in the raw input
and in the clean manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from datamodules.preprocess.quality import input_true_rate, quality
from datamodules.preprocess.run import build, calibrate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=2000, help="raw training records")
    ap.add_argument("--calib", type=int, default=500, help="raw val records used for calibration")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gate_quality")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of conf/preprocess.yaml")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "preprocess",
            overrides=[
                f"preprocess.raw.num_train={args.num}",
                f"preprocess.raw.num_val={args.calib}",
                "preprocess.raw.num_test=0",
                f"preprocess.calibration.size={args.calib}",
                f"paths.root_dir={ROOT}",
                f"preprocess.cache_dir={args.out / 'cache'}",
                *args.overrides,
            ],
        )
    pcfg = cfg.preprocess
    raw, gate, pre = build(pcfg)
    world = raw.world
    cal = calibrate(pcfg, raw, gate, args.out / "calibration", pre) if gate is not None else None
    recs = raw.records("train")
    input_true, input_pairs = input_true_rate(recs)
    out = pre.run(recs, args.out / "clean", "train")
    res = {
        "overrides": args.overrides,
        "gate_threshold": None if gate is None else gate.threshold,
        "calibration": cal,
        "input_true_pair_rate": round(input_true, 4),
        "input_pairs": input_pairs,
        **quality(recs, out["kept"], world),
        "report": out["report"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gate_quality.json").write_text(json.dumps(res, indent=2, default=str))
    print(json.dumps({k: v for k, v in res.items() if k not in ("calibration", "report")}, indent=2))
    print("report:", json.dumps(out["report"]["counts"]), json.dumps(out["report"]["dropped"]))


if __name__ == "__main__":
    main()
