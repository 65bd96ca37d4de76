"""open_clip model factory: any built-in architecture by name, weights by `pretrained` tag or local file, and the
tiny architectures shipped in `model_configs/` (tiny-vit, tiny-rn) for CPU runs and tests.

    spec = ModelSpec(name="tiny-vit")                 # random init, offline
    spec = ModelSpec(name="ViT-B-32", pretrained="openai")            # tag (needs the hub / a warm cache)
    spec = ModelSpec(name="ViT-B-32", pretrained="/ckpt/open_clip.safetensors", quick_gelu=True)
    model, tokenizer, transform = spec.build(), spec.tokenizer(), spec.image_transform()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from datamodules.dataset import trim_padding
from lightning_modules.compact import is_compact, load_compact

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

_TOWER_ERR = "model.name: unknown open_clip architecture '{}'. Tiny configs: {}. Built-in examples: {} ..."


@dataclass
class ModelSpec:
    """Args:
    name: open_clip architecture (e.g. ViT-B-32, RN50, convnext_base) or a tiny one (tiny-vit, tiny-rn).
    pretrained: None (random init), an open_clip tag (e.g. 'openai', 'laion2b_s34b_b79k'), or a local file.
    quick_gelu: 'auto' (True for the 'openai' tag and '-quickgelu' names), or an explicit bool. OpenAI-derived
        fine-tuned checkpoints loaded by path need quick_gelu=True or every score shifts.
    config_file: an extra open_clip JSON architecture to register before building (name = file stem).
    cache_dir: where pretrained tags are cached.
    model_kwargs: extra open_clip.create_model keyword arguments (e.g. force_image_size).
    trim_text: run the text tower only up to the batch's last non-padding token (`TrimmedTextCLIP`; same features,
        less compute) where that is exact: open_clip's own CLIP text tower with a causal mask and first/argmax
        pooling. The training loader and `ClipScorer` drop the padding columns on the host (`trim_padding`), so no
        device ever computes the length; on the CPU the model also trims full-length tokens itself.
    """

    name: str = "tiny-vit"
    pretrained: str | None = None
    quick_gelu: bool | str = "auto"
    config_file: str | None = None
    cache_dir: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    trim_text: bool = True

    def __post_init__(self) -> None:
        if self.config_file is not None:
            path = Path(self.config_file)
            if not path.is_file():
                raise FileNotFoundError(f"model.config_file: not found: '{path}'")
            open_clip.add_model_config(path)
        if open_clip.get_model_config(self.name) is None:
            tiny = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
            raise ValueError(_TOWER_ERR.format(self.name, tiny, open_clip.list_models()[:8]))
        if self.quick_gelu not in ("auto", True, False):
            raise ValueError(f"model.quick_gelu must be 'auto', true or false, got {self.quick_gelu!r}")

    @property
    def force_quick_gelu(self) -> bool:
        if self.quick_gelu == "auto":
            return self.pretrained == "openai" or self.name.endswith("-quickgelu")
        return bool(self.quick_gelu)

    @property
    def config(self) -> dict:
        return open_clip.get_model_config(self.name)

    @property
    def image_size(self) -> int:
        size = self.model_kwargs.get("force_image_size") or self.config["vision_cfg"]["image_size"]
        return size if isinstance(size, int) else size[0]

    def build(self) -> torch.nn.Module:
        pretrained = self.pretrained
        if pretrained is not None and Path(pretrained).suffix and not Path(pretrained).is_file():
            raise FileNotFoundError(f"model.pretrained: weights file not found: '{pretrained}'")
        compact = pretrained is not None and is_compact(pretrained)
        model = self._create(pretrained=None if compact else pretrained)
        # A 1-element logit scale (FSDP shards along dim 0 and rejects 0-d parameters); state dicts written with
        # the 0-d scale of open_clip (and of checkpoints from before this change) still load.
        model.register_load_state_dict_pre_hook(_reshape_logit_params)
        if compact:  # shipped weights (fp16, trained embedding rows only; lightning_modules/compact.py)
            model.load_state_dict(load_compact(pretrained), strict=True)
        if self.trim_text and TrimmedTextCLIP.applies(model):
            model.__class__ = TrimmedTextCLIP
        log.info(
            "built open_clip %s (pretrained=%s, quick_gelu=%s)", self.name, pretrained, self.force_quick_gelu
        )
        return model

    def _create(self, pretrained: str | None, device: str = "cpu") -> torch.nn.Module:
        """open_clip's model of this spec: the one architecture `build` and `text_trim_multiple` both see."""
        return open_clip.create_model(
            self.name,
            pretrained=pretrained,
            force_quick_gelu=self.force_quick_gelu,
            cache_dir=self.cache_dir,
            device=device,
            **({"nonscalar_logit_scale": True} | dict(self.model_kwargs)),
        )

    def tokenizer(self):
        return open_clip.get_tokenizer(self.name)

    @property
    def text_trim_multiple(self) -> int | None:
        """`TrimmedTextCLIP.MULTIPLE` when `build()` makes a `TrimmedTextCLIP` (the loader may then drop padding
        columns, `trim_padding`), else None. Decided on a model built on the 'meta' device: no memory, no weights
        read, the global RNG untouched, the same test as `build()`."""
        cfg = self.config
        if (
            not self.trim_text
            or cfg.get("custom_text")
            or self.model_kwargs.get("force_custom_text")
            or "hf_model_name" in cfg.get("text_cfg", {})  # Hugging Face: building it reads the hub
            or "multimodal_cfg" in cfg  # CoCa
        ):
            return None  # never open_clip's CLIP class
        with torch.device("meta"):
            model = self._create(pretrained=None, device="meta")
        return TrimmedTextCLIP.MULTIPLE if TrimmedTextCLIP.applies(model) else None

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the model's input normalisation (the pretrained tag's when it has its own)."""
        pp: dict = dict(self.config.get("preprocess_cfg", {}))
        if self.pretrained and not Path(self.pretrained).suffix:
            pp.update(
                {
                    k: v
                    for k, v in open_clip.get_pretrained_cfg(self.name, self.pretrained).items()
                    if k in ("mean", "std")
                }
            )
        mean = pp.get("mean") or open_clip.OPENAI_DATASET_MEAN
        std = pp.get("std") or open_clip.OPENAI_DATASET_STD
        return tuple(mean), tuple(std)

    def image_transform(self, train: bool = False):
        """The model's preprocessing (PIL -> normalised float tensor). No horizontal flip ever: it would turn
        'left of' into 'right of'."""
        mean, std = self.normalization()
        return open_clip.image_transform(self.image_size, is_train=train, mean=mean, std=std)

    def uint8_transform(self, train: bool = False):
        """The training loader's preprocessing: the same resize/crop/RGB steps as `image_transform`, ending in a
        uint8 [C, H, W] tensor; `ClipModule.normalize_images` finishes on the device (float, /255, mean/std).
        An image already at the model's square size is not resampled (the synthetic world renders at it)."""
        steps = [
            t
            for t in self.image_transform(train).transforms
            if type(t).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")
        ]
        return Uint8Transform(steps, self.image_size, skip_if_sized=not train)


class Uint8Transform:
    """PIL image -> uint8 tensor [3, H, W] through `steps` (resize, crop, RGB); picklable for loader workers."""

    def __init__(self, steps: list, size: int, skip_if_sized: bool = True) -> None:
        self.steps = steps
        self.size = size
        self.skip_if_sized = skip_if_sized  # eval steps are the identity on a size x size RGB image

    def __call__(self, image) -> torch.Tensor:
        import numpy as np

        if not self.skip_if_sized or image.size != (self.size, self.size) or image.mode != "RGB":
            for step in self.steps:
                image = step(image)
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:  # a grayscale image the steps did not convert
            array = np.repeat(array[:, :, None], 3, axis=2)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return f"Uint8Transform(size={self.size}, steps={self.steps})"


class TrimmedTextCLIP(open_clip.CLIP):
    """open_clip's CLIP whose text tower runs only over the columns it is given, up to its context length: the
    training loader and `ClipScorer` drop the batch's trailing padding columns on the host (`trim_padding`, rounded
    up to a multiple of 4, so torch.compile sees few shapes). Exact: with the causal mask a token attends only to
    tokens before it, and the pooled token (the first, or the end token for argmax pooling) comes before every
    dropped column. A synthetic-world batch needs ~24 of 32 positions (tiny CLIPs) or of 77 (ViT-B/32 and up), which
    saves ~15% of a tiny CLIP's hard-negative step on CPU (README "What the default run does"). Same parameters and
    state dict as the CLIP it replaces (set by `ModelSpec.build`; `trim_text=false` keeps open_clip's class).
    Full-length tokens are trimmed here too, but only on the CPU: on an accelerator the length would be a host sync
    every step; there only the given shape counts."""

    PAD = 0  # open_clip's SimpleTokenizer pads with 0
    MULTIPLE = 4

    @staticmethod
    def applies(model: torch.nn.Module) -> bool:
        return (
            type(model) is open_clip.CLIP
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in ("argmax", "first")
        )

    def encode_text(self, text: torch.Tensor, normalize: bool = False):
        ctx = self.positional_embedding.shape[0]
        # No sync on the host; shorter tokens were trimmed already; under torch.compile the data-dependent length
        # would break the graph (the loader trims for compiled runs).
        # (is_compiling first: a shape test ahead of it would be a guard `columns != ctx`, i.e. a second graph)
        if not torch.compiler.is_compiling() and text.device.type == "cpu" and text.shape[1] == ctx:
            text = trim_padding(text, self.MULTIPLE, self.PAD)
        length = text.shape[1]
        if length > ctx:  # open_clip's own error (the full context takes the path below: one compiled graph)
            return super().encode_text(text, normalize=normalize)
        cast_dtype = self.transformer.get_cast_dtype()
        # One compiled graph for every length up to the full context: narrow, not [:length] (a slice's size is
        # min(length, ctx), which torch.compile specialises to length < ctx), and the causal mask made at the
        # length (a corner of the stored one is contiguous only at the full length: another specialisation).
        pos = self.positional_embedding.narrow(0, 0, length)
        mask = torch.full(
            (length, length), float("-inf"), dtype=self.attn_mask.dtype, device=text.device
        ).triu_(1)
        x = self.token_embedding(text).to(cast_dtype) + pos.to(cast_dtype)
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = open_clip.transformer.text_global_pool(x, text, self.text_pool_type)
        if self.text_projection is not None:
            x = (
                self.text_projection(x)
                if isinstance(self.text_projection, torch.nn.Linear)
                else x @ self.text_projection
            )
        return torch.nn.functional.normalize(x, dim=-1) if normalize else x


def _reshape_logit_params(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: a 0-d `logit_scale`/`logit_bias` in the incoming state (open_clip's own layout)
    is reshaped to the model's 1-element parameter, and the other way round."""
    for name in ("logit_scale", "logit_bias"):
        key, param = prefix + name, getattr(module, name, None)
        if isinstance(param, torch.Tensor) and key in state_dict and state_dict[key].shape != param.shape:
            if state_dict[key].numel() == param.numel() == 1:
                state_dict[key] = state_dict[key].reshape(param.shape)


def open_clip_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in stock open_clip's layout (0-d logit scale/bias), for export."""
    state = model.state_dict()
    for name in ("logit_scale", "logit_bias"):
        if name in state and state[name].numel() == 1:
            state[name] = state[name].reshape(())
    return state


def checkpoint_model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The open_clip state dict inside a train.py (Lightning) checkpoint: its `model.*` entries, prefix removed."""
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_init_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Initialises `model` from a train.py checkpoint (`.ckpt`: its `model.*` weights only, read with
    weights_only=True; optimizer state and step are not restored) or an exported open_clip state dict
    (`.safetensors`). Strict: the architecture must match. Used by `module.init_from` (the two-stage regime:
    contrastive pretraining, then hard-negative fine-tuning from that checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"module.init_from: weights not found: '{path}'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from lightning_modules.inference import read_checkpoint

        ckpt = read_checkpoint(path, "module.init_from")
        if "state_dict" not in ckpt:
            raise ValueError(
                f"module.init_from: '{path}' has no 'state_dict'; expected a train.py checkpoint"
            )
        state = checkpoint_model_state(ckpt)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"module.init_from: '{path}' does not match the configured model: {e}") from e
    log.info("initialised weights from %s", path)
