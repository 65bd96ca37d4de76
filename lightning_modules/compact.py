"""Compact weights: an open_clip state dict small enough to ship in the repository (the synthetic world's gate
scorers, `assets/scorers/`, so `make train` need not train them on a fresh clone).

    python -m lightning_modules.export <run>/checkpoints/last.ckpt assets/scorers/tiny-vit.safetensors --compact
    ModelSpec(name="tiny-vit", pretrained="assets/scorers/tiny-vit.safetensors").build()   # loads it (fp32)

Two reductions, both recorded in the file's safetensors metadata (`format: hardneg-compact-1`):
- floating-point tensors are stored in fp16 and loaded back as the model's dtype (fp32);
- the token embedding keeps only the rows training updated: a row whose AdamW second moment is exactly zero never
  received a gradient (no caption in the training data had that token), so it still holds its random
  initialisation (shrunk by weight decay) and carries no information. Those rows load as zeros. A tiny CLIP trained
  on the synthetic world updates ~40 of 49,408 rows; the token embedding is 83% of its parameters.
An ordinary open_clip state dict is unaffected: `is_compact` is False for it and it loads through open_clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

FORMAT = "hardneg-compact-1"
TOKEN_KEY = "token_embedding.weight"
_ROWS, _VALUES = TOKEN_KEY + ".rows", TOKEN_KEY + ".values"


def is_compact(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("format") == FORMAT


def trained_token_rows(ckpt: dict) -> torch.Tensor:
    """Indices of the token-embedding rows a train.py checkpoint's AdamW state shows as updated (second moment
    > 0). The embedding's state is the only one of its shape; anything else is an error (not a guess)."""
    shape = tuple(ckpt["state_dict"]["model." + TOKEN_KEY].shape)
    states = [
        s["exp_avg_sq"]
        for opt in ckpt.get("optimizer_states") or []
        for s in opt["state"].values()
        if "exp_avg_sq" in s and tuple(s["exp_avg_sq"].shape) == shape
    ]
    if len(states) != 1:
        raise ValueError(
            f"compact export: need exactly one optimizer state of the token embedding's shape {shape} in the "
            f"checkpoint (found {len(states)}); was it written by train.py with AdamW, and not weights-only?"
        )
    return (states[0].reshape(shape[0], -1) > 0).any(1).nonzero().flatten().to(torch.int64)


def compact_bytes(state: dict[str, torch.Tensor], rows: torch.Tensor, meta: dict | None = None) -> bytes:
    """safetensors bytes of `state` in the compact format (fp16 floats; only `rows` of the token embedding)."""
    if TOKEN_KEY not in state:
        raise ValueError(f"compact export: the state dict has no '{TOKEN_KEY}'")
    out = {}
    for k, v in state.items():
        v = v.detach()
        if k == TOKEN_KEY:
            out[_ROWS] = rows.to(torch.int64).contiguous()
            v = v[rows]
            k = _VALUES
        out[k] = (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
    vocab, width = state[TOKEN_KEY].shape
    metadata = {"format": FORMAT, "vocab_size": str(vocab), "width": str(width)}
    metadata |= {k: json.dumps(v) for k, v in (meta or {}).items()}
    return save(out, metadata=metadata)


def load_compact(path: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The full open_clip state dict of a compact file: floats as `dtype`, untrained embedding rows as zeros."""
    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"'{path}': not a compact weights file (metadata format={meta.get('format')!r})")
    raw = load_file(str(path))
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v) for k, v in raw.items() if k not in (_ROWS, _VALUES)
    }
    rows = raw[_ROWS]
    table = torch.zeros(int(meta["vocab_size"]), int(meta["width"]), dtype=dtype)
    table[rows] = raw[_VALUES].to(dtype)
    state[TOKEN_KEY] = table
    return state


def token_rows(path: str | Path) -> set[int]:
    """The token ids a compact file has trained rows for."""
    with safe_open(str(path), "pt") as f:
        return set(f.get_tensor(_ROWS).tolist())
