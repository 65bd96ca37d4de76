"""Model-side inference shared by training, evaluation, the preprocessing gate and export: the scorer every
benchmark and the gate use (model + preprocessing + tokenizer), checkpoint loading and device choice.

    model, spec, run_cfg = load_checkpoint("logs/train/runs/<run>/checkpoints/last.ckpt")
    scorer = ClipScorer(model, spec.image_transform(), spec.tokenizer(), device=resolve_device("auto"))
    img, txt = scorer.encode_images(images), scorer.encode_texts(captions)     # L2-normalised features
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from datamodules.dataset import trim_padding
from lightning_modules.model_factory import ModelSpec, TrimmedTextCLIP, checkpoint_model_state


class ClipScorer:
    """Encodes PIL images and captions into L2-normalised features with an open_clip model (eval mode)."""

    def __init__(
        self,
        model: torch.nn.Module,
        image_transform: Callable,
        tokenizer: Callable,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress: Any = None  # a tqdm-like bar counting encoded items (set by the benchmark runner)

    def _count(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for s in range(0, len(images), self.batch_size):
            x = torch.stack([self.image_transform(im) for im in images[s : s + self.batch_size]]).to(
                self.device
            )
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
            self._count(len(x))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def encode_lazy(self, refs: Sequence[Any], load: Callable[[Any], Image.Image]) -> torch.Tensor:
        """Encodes images loaded batch by batch (`load(ref) -> PIL`), so memory holds one batch of pixels."""
        out = []
        for s in range(0, len(refs), self.batch_size):
            out.append(self.encode_images([load(r) for r in refs[s : s + self.batch_size]]))
        return torch.cat(out) if out else torch.empty(0)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), self.batch_size):
            t = self.tokenizer(list(texts[s : s + self.batch_size]))
            if isinstance(self.model, TrimmedTextCLIP):  # on the host: the device computes no length
                t = trim_padding(t, TrimmedTextCLIP.MULTIPLE, TrimmedTextCLIP.PAD)
            t = t.to(self.device)
            out.append(F.normalize(self.model.encode_text(t).float(), dim=-1).cpu())
            self._count(len(t))
        return torch.cat(out) if out else torch.empty(0)


def resolve_device(device: str) -> torch.device:
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: expected auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


# open_clip.create_model keyword arguments a checkpoint may carry: they shape the architecture only. Anything else
# (weights_only, pretrained_image_path, pretrained_hf, cache_dir, ...) could load files or run code and is refused.
ARCHITECTURE_KWARGS = frozenset(
    {"force_image_size", "force_patch_dropout", "force_custom_text", "init_logit_scale", "init_logit_bias"}
)
NUMBER_KWARGS = frozenset({"init_logit_scale", "init_logit_bias"})  # initial values: numbers only


def spec_from_checkpoint_config(model_cfg: dict, path: str | Path = "<checkpoint>") -> ModelSpec:
    """The ModelSpec of a checkpoint's saved `model` config, rebuilt from an allow-list of architecture fields.

    A checkpoint's config is data, never instantiated (`_target_` would be code), and no field may make open_clip
    read another file: the weights all come from the checkpoint (pretrained=None, no cache_dir), and
    `model_kwargs` is limited to ARCHITECTURE_KWARGS. A refused field is named in the error."""
    if not isinstance(model_cfg, dict):
        raise ValueError(f"ckpt_path: '{path}': model config is not a mapping")
    name = model_cfg.get("name")
    if not isinstance(name, str):
        raise ValueError(f"ckpt_path: '{path}': model.name must be a string, got {name!r}")
    kwargs = model_cfg.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"ckpt_path: '{path}': model.model_kwargs must be a mapping")
    refused = sorted(set(kwargs) - ARCHITECTURE_KWARGS)
    if refused:
        raise ValueError(
            f"ckpt_path: '{path}': refusing model.model_kwargs.{refused[0]} (allowed in a checkpoint: "
            f"{sorted(ARCHITECTURE_KWARGS)}); a checkpoint may not make open_clip load other files"
        )
    for k in NUMBER_KWARGS & set(kwargs):
        if kwargs[k] is not None and (isinstance(kwargs[k], bool) or not isinstance(kwargs[k], (int, float))):
            raise ValueError(
                f"ckpt_path: '{path}': model.model_kwargs.{k} must be a number, got {kwargs[k]!r}"
            )
    config_file = model_cfg.get("config_file")
    if config_file is not None and not str(config_file).endswith(".json"):
        raise ValueError(
            f"ckpt_path: '{path}': model.config_file must be an open_clip JSON config, got {config_file!r}"
        )
    quick_gelu = model_cfg.get("quick_gelu", "auto")
    if quick_gelu not in ("auto", True, False):
        raise ValueError(f"ckpt_path: '{path}': model.quick_gelu must be auto/true/false, got {quick_gelu!r}")
    # Resolve 'auto' against the name/tag the weights were trained with, then build at random init.
    trained = ModelSpec(
        name=name,
        pretrained=model_cfg.get("pretrained"),
        quick_gelu=quick_gelu,
        config_file=config_file,
        model_kwargs=dict(kwargs),
    )
    return replace(trained, pretrained=None, cache_dir=None, quick_gelu=trained.force_quick_gelu)


def read_checkpoint(path: str | Path, key: str) -> dict:
    """torch.load with weights_only=True and an error that names the config key and the file (an empty, truncated
    or foreign file would otherwise surface as EOFError or torch's advice to set weights_only=False)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: checkpoint not found: '{path}'")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        size = path.stat().st_size
        raise ValueError(
            f"{key}: '{path}' ({size} bytes) is not a readable train.py checkpoint (empty, truncated, or not a "
            f"weights-only torch file): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{key}: '{path}' holds a {type(ckpt).__name__}, not a train.py checkpoint")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, ModelSpec, dict]:
    """Rebuilds the open_clip model of a train.py checkpoint. Returns (model in eval mode, spec, run config)."""
    return model_from_checkpoint(read_checkpoint(path, "ckpt_path"), path)


def model_from_checkpoint(ckpt: dict, path: str | Path) -> tuple[torch.nn.Module, ModelSpec, dict]:
    """`load_checkpoint` on a checkpoint already read (`read_checkpoint`); `path` names it in errors."""
    run_cfg = (ckpt.get("hyper_parameters") or {}).get("run_config")
    if not run_cfg or "model" not in run_cfg:
        raise ValueError(f"ckpt_path: '{path}' has no saved run config; was it written by train.py?")
    spec = spec_from_checkpoint_config(run_cfg["model"], path)
    model = spec.build()
    model.load_state_dict(checkpoint_model_state(ckpt), strict=True)
    return model.eval(), spec, run_cfg


def _experiment_label(run_cfg: dict | None) -> str | None:
    tags, seed = (run_cfg or {}).get("tags"), (run_cfg or {}).get("seed")
    return f"{tags[0]}-seed{seed}" if tags and seed is not None else None


def load_models(
    ckpt_paths: Sequence[str | Path], open_clip_cfg: dict | None = None
) -> dict[str, tuple[torch.nn.Module, ModelSpec, dict]]:
    """label -> (model, spec, run config) for train.py checkpoints and/or one open_clip architecture + weights
    (`{"name", "pretrained", "quick_gelu"}`). A checkpoint's label names its experiment and seed
    (`<first tag>-seed<N>`, e.g. `hardneg-seed0`, from the config inside it); when two checkpoints share that, or a
    checkpoint has no config, the run folder name is used (multirun folders are just `0`, `1`, ...)."""
    loaded = [load_checkpoint(p) for p in ckpt_paths]
    names = [_experiment_label(run_cfg) for _, _, run_cfg in loaded]
    out: dict[str, tuple] = {}
    for p, item, name in zip(ckpt_paths, loaded, names):
        folder = Path(p).parent.parent.name if Path(p).parent.name == "checkpoints" else Path(p).stem
        label = name if name and names.count(name) == 1 else (f"{name}@{folder}" if name else folder)
        while label in out:
            label += "'"
        out[label] = item
    oc = open_clip_cfg or {}
    if oc.get("name"):
        spec = ModelSpec(
            name=oc["name"], pretrained=oc.get("pretrained"), quick_gelu=oc.get("quick_gelu", "auto")
        )
        out[f"{oc['name']}:{Path(str(oc.get('pretrained'))).name}"] = (spec.build().eval(), spec, {})
    if not out:
        raise ValueError("nothing to evaluate: set ckpt_path=<file or list> or open_clip.name=<architecture>")
    return out
