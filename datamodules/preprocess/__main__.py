"""Run preprocessing alone:

    python -m datamodules.preprocess                                # noisy synthetic world, symbolic backends
    python -m datamodules.preprocess calibrate_only=true gate.target_far=0.01

Calibrates the gate on the raw source's clean calibration split when its stats file is missing (histogram +
suggested threshold in `<out_dir>/calibration/`), then writes `<out_dir>/clean.jsonl` and the report.
The last line printed names the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.preprocess.pipeline import Preprocessor


def run_preprocess(cfg: DictConfig) -> dict:
    out_dir = Path(cfg.out_dir)
    gate = instantiate(cfg.gate.ensemble)
    raw = instantiate(cfg.raw)
    stats = out_dir / "calibration" / "gate_stats.json"
    if stats.is_file() and not cfg.recalibrate:
        gate.load_stats(stats)
        gate.threshold = json.loads((out_dir / "calibration" / "calibration.json").read_text())[
            "suggested_threshold"
        ]
    else:
        calib = raw.records(cfg.gate.calibration_split)
        calib = [
            r for r in calib if r.image is not None and r.caption and r.meta.get("noise", "clean") == "clean"
        ]
        calib = calib[: cfg.gate.calibration_size]
        res = gate.calibrate(
            [r.image.load() if hasattr(r.image, "load") else r.image for r in calib],
            [r.caption for r in calib],
            out_dir / "calibration",
            target_far=cfg.gate.target_far,
        )
        gate.threshold = res["suggested_threshold"] if cfg.gate.threshold is None else cfg.gate.threshold
    if cfg.calibrate_only:
        print(f"gate calibrated: {out_dir / 'calibration'}")
        return {}
    pre = Preprocessor(
        gate, captioner=instantiate(cfg.captioner), t2i=instantiate(cfg.t2i), **cfg.preprocessor
    )
    result = pre.run(raw.records("train"), out_dir)
    print((out_dir / "report.md").read_text())
    print(f"clean manifest: {out_dir / 'clean.jsonl'}")
    return result["report"]


@hydra.main(version_base="1.3", config_path="../../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    run_preprocess(cfg)


if __name__ == "__main__":
    main()
