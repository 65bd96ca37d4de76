"""Image search with a trained model: a FAISS index of a collection, a CLI and a web page (README "Search").

python -m lightning_modules.search index build <model> <image folder | manifest> --out indexes/my_index
python -m lightning_modules.search search --index indexes/my_index "a red cube left of a blue ball"
python -m lightning_modules.search serve --index indexes/my_index [--index indexes/other]     # web page
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_scorer(model_ref: str, device: str = "auto", batch_size: int = 256) -> Any:
    """A `ClipScorer` for a model reference: a train.py checkpoint (`.ckpt`), an exported open_clip folder
    (`open_clip_config.json` inside), or `<open_clip name>:<weights file>`."""
    import open_clip

    from lightning_modules.inference import ClipScorer, load_checkpoint, resolve_device
    from lightning_modules.model_factory import ModelSpec

    dev = resolve_device(device)
    path = Path(model_ref)
    if path.suffix == ".ckpt":
        model, spec, _ = load_checkpoint(path)
        return ClipScorer(
            model.eval().to(dev), spec.image_transform(), spec.tokenizer(), device=dev, batch_size=batch_size
        )
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"model: '{path}' is a folder without open_clip_config.json (not an export)"
            )
        model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{path}")
        return ClipScorer(
            model.eval().to(dev),
            transform,
            open_clip.get_tokenizer(f"local-dir:{path}"),
            device=dev,
            batch_size=batch_size,
        )
    if ":" in model_ref:
        name, weights = model_ref.split(":", 1)
        spec = ModelSpec(name=name, pretrained=weights or None)
        return ClipScorer(
            spec.build().eval().to(dev),
            spec.image_transform(),
            spec.tokenizer(),
            device=dev,
            batch_size=batch_size,
        )
    raise ValueError(
        f"model: '{model_ref}' is neither a .ckpt file, an exported open_clip folder, nor '<name>:<weights file>'"
    )
