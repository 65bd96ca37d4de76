"""Run preprocessing alone:

    python -m datamodules.preprocess                                 # noisy synthetic world, symbolic backends
    python -m datamodules.preprocess calibrate_only=true preprocess.calibration.target_far=0.01
    python -m datamodules.preprocess raw=image_folder preprocess.raw.root=/data/imgs gate=openai \\
        stages=[caption_vlm,repair_vlm] preprocess.stages.caption.backend.model=/models/qwen2.5-vl
    torchrun --nproc_per_node 8 -m datamodules.preprocess ...        # model calls split across ranks

Calibrates the gate on the raw pairs (histogram + suggested threshold in `<manifest dir>/calibration/`), runs the
stages and the gate per split and writes `<split>.jsonl` + reports into `<preprocess.out_dir>/<fingerprint>/`.
Under torchrun each rank makes the model calls whose cache keys fall to it; rank 0 writes the outputs. The last line
printed names the manifest folder.
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from datamodules.preprocess.run import clean_dir, run_preprocess


def main_cfg(cfg: DictConfig) -> dict:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    out = clean_dir(cfg.preprocess)
    reports = run_preprocess(cfg.preprocess, out, calibrate_only=cfg.calibrate_only)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        for split in cfg.preprocess.splits:
            if (out / f"report_{split}.md").is_file() and not cfg.calibrate_only:
                print((out / f"report_{split}.md").read_text())
        print(f"gate calibration: {out / 'calibration'}" if cfg.calibrate_only else f"clean manifests: {out}")
    return reports


@hydra.main(version_base="1.3", config_path="../../conf", config_name="preprocess")
def main(cfg: DictConfig) -> None:
    main_cfg(cfg)


if __name__ == "__main__":
    main()
