"""Export a train.py checkpoint for use without this framework, in one of open_clip's own formats:

    python -m lightning_modules.export <run>/checkpoints/last.ckpt exported/my_model         # a folder
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:exported/my_model")

    python -m lightning_modules.export <run>/checkpoints/last.ckpt exported/model.safetensors  # a single file
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="exported/model.safetensors")

Folder (any path not ending in .safetensors): `open_clip_config.json` ({"model_cfg": architecture incl. quick_gelu,
"preprocess_cfg": size/mean/std}) + `open_clip_model.safetensors`, the layout open_clip's `local-dir:` (and
`hf-hub:`) loader reads, so architectures open_clip does not ship (tiny-vit) load with no code. Single file: the
state dict, with a sidecar `<out>.json` naming the architecture, its config and quick_gelu. `--compact` (single file
only): fp16, and only the token-embedding rows training updated — small enough to ship (lightning_modules/compact.py;
`ModelSpec(pretrained=<file>)` loads it, open_clip alone does not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import open_clip
from safetensors.torch import save

from datamodules.atomic import atomic_write_bytes, atomic_write_text
from lightning_modules.compact import FORMAT, compact_bytes, trained_token_rows
from lightning_modules.inference import model_from_checkpoint, read_checkpoint
from lightning_modules.model_factory import open_clip_state_dict


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path, compact: bool = False) -> Path:
    out = Path(out_path)
    if compact and out.suffix != ".safetensors":
        raise ValueError(f"export --compact writes a single .safetensors file, not a folder: '{out}'")
    ckpt = read_checkpoint(ckpt_path, "ckpt_path")  # read once: the model, and the optimizer state (compact)
    model, spec, run_cfg = model_from_checkpoint(ckpt, ckpt_path)
    state = open_clip_state_dict(model)
    extra: dict = {}
    if compact:
        rows = trained_token_rows(ckpt)
        weights = compact_bytes(state, rows, {"name": spec.name})
        extra = {"format": FORMAT, "trained_token_rows": len(rows), "global_step": ckpt.get("global_step")}
    else:
        weights = save({k: v.detach().contiguous() for k, v in state.items()})
    if out.suffix != ".safetensors":  # an open_clip local-dir / hf-hub folder
        model_cfg = dict(spec.config) | {"quick_gelu": spec.force_quick_gelu}
        if spec.model_kwargs.get("force_image_size"):
            model_cfg["vision_cfg"] = dict(model_cfg["vision_cfg"]) | {"image_size": spec.image_size}
        pp = dict(spec.config.get("preprocess_cfg", {}))
        preprocess_cfg = {
            "size": spec.image_size,
            "mean": list(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            "std": list(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        }
        config = {
            "model_cfg": model_cfg,
            "preprocess_cfg": preprocess_cfg,
            "source_checkpoint": str(ckpt_path),
        }
        atomic_write_bytes(out / "open_clip_model.safetensors", weights)
        atomic_write_text(out / "open_clip_config.json", json.dumps(config, indent=2))
        return out
    atomic_write_bytes(out, weights)
    meta = {
        "name": spec.name,
        "quick_gelu": spec.force_quick_gelu,
        "model_cfg": spec.config,
        "source_checkpoint": str(ckpt_path),
        **extra,
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt_path")
    ap.add_argument("out_path", help="a folder (open_clip local-dir layout) or a .safetensors file")
    ap.add_argument(
        "--compact", action="store_true", help="fp16 + trained token rows only (a .safetensors file)"
    )
    args = ap.parse_args()
    out = export_checkpoint(args.ckpt_path, args.out_path, compact=args.compact)
    if out.suffix == ".safetensors":
        print(f"exported {out} (+ {out.with_suffix('.json')})")
    else:
        print(f"exported {out}/ — load it with open_clip.create_model_and_transforms('local-dir:{out}')")


if __name__ == "__main__":
    main()
