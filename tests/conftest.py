"""Shared fixtures: configs composed with compose(), tiny data, offline environment."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small sizes that keep a whole train -> test -> evaluate run in seconds.
TINY = [
    "data.source.num_train=256",
    "data.source.num_val=64",
    "data.source.num_test=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "benchmark.synthetic.num_items=24",
    "benchmark.synthetic.num_winoground=12",
    "trainer.enable_progress_bar=false",
]


def make_cfg(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path / "logs")
    return cfg


@pytest.fixture
def cfg_factory(tmp_path):
    def factory(*overrides: str, config_name: str = "train", tiny: bool = True) -> DictConfig:
        ov = (TINY if tiny and config_name == "train" else []) + list(overrides)
        return make_cfg(tmp_path, ov, config_name)

    return factory


@pytest.fixture
def pairs_manifest(tmp_path) -> Path:
    """A small JSONL manifest of generated images, two captions for one of the images."""
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows = []
    colors = ["red", "green", "blue", "yellow", "white", "purple", "orange", "cyan"]
    for i, c in enumerate(colors * 3):
        Image.new("RGB", (40, 30), c).save(img_dir / f"{i}.png")
        rows.append({"id": f"r{i}", "image": f"imgs/{i}.png", "caption": f"a plain {c} picture number {i}"})
    rows.append({"id": "extra", "image": "imgs/0.png", "caption": "another caption of the first picture"})
    path = tmp_path / "pairs.jsonl"
    import json

    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def cuda_available() -> bool:
    return torch.cuda.is_available()


WORDS = ["<s>", "<pad>", "</s>", "<unk>"] + (
    "a an the red blue green yellow circle square star left right of to small large and no two three make it "
    "rewrite image caption so that longer describes same change exactly one colour word keep every other answer "
    "with new only : . , dog man riding horse"
).split()


def tiny_tokenizer(max_len: int = 77):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_len,
    )


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A tiny random Llama causal LM + word-level tokenizer saved with save_pretrained (offline)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_llm")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_sd_components(in_channels: int) -> dict:
    """diffusers' get_dummy_components sizes: UNet (in_channels 8 for InstructPix2Pix, 4 for img2img), tiny VAE,
    tiny CLIP text encoder, an offline word-level tokenizer."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    )
    te = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            pad_token_id=1,
            vocab_size=1000,
        )
    )
    return dict(
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True),
        vae=vae,
        text_encoder=te,
        tokenizer=tiny_tokenizer(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def tiny_pix2pix_dir(tmp_path_factory) -> Path:
    """A tiny random InstructPix2Pix pipeline saved offline."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    path = tmp_path_factory.mktemp("tiny_p2p")
    StableDiffusionInstructPix2PixPipeline(**tiny_sd_components(8)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionPipeline (text-to-image) saved offline."""
    from diffusers import StableDiffusionPipeline

    path = tmp_path_factory.mktemp("tiny_sd")
    StableDiffusionPipeline(**tiny_sd_components(4)).save_pretrained(path)
    return path


VLM_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_end|>",
]
VLM_WORDS = (
    "a an the red blue green yellow circle square triangle star left right above below of two three no small "
    "large user assistant system describe image caption this look again it may be wrong write one short sentence "
    'that correctly reads : . "'
).split()


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2.5-VL (image-text-to-text) with a full offline processor: Qwen2VL image processor, a
    word-level fast tokenizer holding the Qwen special tokens, a small chat template (NOTES.md recipe)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {w: i for i, w in enumerate(dict.fromkeys(VLM_SPECIALS + VLM_WORDS + ["<unk>"]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    ftok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=VLM_SPECIALS,
    )
    template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }} "
        "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|> <|image_pad|> "
        "<|vision_end|> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}<|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    ftok.chat_template = template
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28, max_pixels=56 * 56
        ),
        tokenizer=ftok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    ids = {s: vocab[s] for s in VLM_SPECIALS}
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]},
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=32,
        num_heads=4,
        out_hidden_size=32,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=28,
        fullatt_block_indexes=[1],
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_vlm")
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path)
    proc.save_pretrained(path)
    return path


def vlm_suppress_ids() -> list[int]:
    """Token ids a tiny random VLM must not sample (image/video placeholders, pad, im_start)."""
    return [0, 1, 3, 4, 5, 6]
