"""Export a train.py checkpoint as an open_clip state dict in safetensors, loadable without this framework:

    python -m lightning_modules.export logs/train/runs/<run>/checkpoints/last.ckpt out/model.safetensors

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="out/model.safetensors")

A sidecar `<out>.json` records the architecture name, its open_clip config (needed for architectures that are not
built into open_clip, e.g. tiny-vit: `open_clip.add_model_config(<that json's model_cfg>)`), and quick_gelu.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save

from datamodules.atomic import atomic_write_bytes, atomic_write_text
from lightning_modules.inference import load_checkpoint


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path) -> Path:
    model, spec, run_cfg = load_checkpoint(ckpt_path)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save({k: v.detach().contiguous() for k, v in model.state_dict().items()}))
    meta = {
        "name": spec.name,
        "quick_gelu": spec.force_quick_gelu,
        "model_cfg": spec.config,
        "source_checkpoint": str(ckpt_path),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt_path")
    ap.add_argument("out_path")
    args = ap.parse_args()
    out = export_checkpoint(args.ckpt_path, args.out_path)
    print(f"exported {out} (+ {out.with_suffix('.json')})")


if __name__ == "__main__":
    main()
