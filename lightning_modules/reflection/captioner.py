"""A captioner you can train here: a tiny Qwen2.5-VL (the real transformers class, random init from a config) with a
fully offline processor whose vocabulary is the synthetic world's words, trained by SFT on (image, caption) pairs on
the CPU. Caption truth is exact on this world (`holds()` on the scene graph), so every stage has a ground-truth metric.

    python -m lightning_modules.reflection.captioner --steps 1500 --out logs/captioner     # SFT + truth rate

The same code path takes a real VLM by local path (`load_captioner(path)`: any Qwen2/2.5-VL folder with its
processor); only `build_tiny_captioner` is specific to the synthetic world.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from datamodules.world import World
from datamodules.world.claims import NUMBERS, RELATION_TEXT, holds, parse_claim
from datamodules.world.scene import COLORS, SHAPES, SIZES

log = logging.getLogger(__name__)

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_end|>",
]
PROMPT = "describe the image"
TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }} "
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|> <|image_pad|> "
    "<|vision_end|> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def world_words() -> list[str]:
    words = [
        "a",
        "an",
        "and",
        "no",
        ",",
        "user",
        "assistant",
        "system",
        "describe",
        "the",
        "image",
        "look",
        "again",
        "is",
        "there",
        "?",
        "yes",
        "what",
        "colour",
        "where",
        "how",
        "many",
        "are",
        "relative",
        "to",
    ]
    words += list(COLORS) + list(SIZES) + list(SHAPES)
    words += [s + ("es" if s.endswith(("s", "x")) else "s") for s in SHAPES]
    words += [w for n in NUMBERS.values() if n for w in n.split()]
    words += [w for t in RELATION_TEXT.values() for w in t.split()]
    return list(dict.fromkeys(words))


def build_tiny_captioner(
    out: str | Path,
    *,
    hidden: int = 128,
    layers: int = 4,
    vision_hidden: int = 64,
    max_pixels: int = 112 * 112,
    seed: int = 0,
) -> Path:
    """Writes a random-init tiny Qwen2.5-VL + processor (word-level tokenizer over the world's words, Qwen2-VL image
    processor: images up to `max_pixels`, 14 px patches merged 2x2) to `out`; no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIALS + world_words() + ["<unk>"]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    ftok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS,
    )
    ftok.chat_template = TEMPLATE
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28, max_pixels=max_pixels
        ),
        tokenizer=ftok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=TEMPLATE,
    )
    ids = {s: vocab[s] for s in SPECIALS}
    heads = max(2, hidden // 32)
    half = (
        hidden // heads // 2
    )  # rotary frequencies per head, split over (time, height, width) as in Qwen2.5-VL
    mrope = [half // 2, half // 4, half - half // 2 - half // 4]
    text = dict(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope},
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_heads=max(2, vision_hidden // 32),
        out_hidden_size=hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
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
    torch.manual_seed(seed)
    out = Path(out)
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def load_captioner(path: str | Path) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"captioner: no model folder at '{path}' (config.json missing)")
    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def caption_prompt(processor: Any) -> str:
    """The chat prompt (image + `PROMPT`, generation turn open) captions are generated after."""
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}],
        add_generation_prompt=True,
    )


def sft_batch(processor: Any, images: list, captions: list[str]) -> dict[str, torch.Tensor]:
    """Inputs with labels on the caption tokens (+ the closing <|im_end|>) only."""
    prompt = caption_prompt(processor)
    enc = processor(
        text=[f"{prompt}{c} <|im_end|>" for c in captions], images=images, return_tensors="pt", padding=True
    )
    n_prompt = processor(text=[prompt], images=images[:1], return_tensors="pt")["input_ids"].shape[1]
    labels = enc["input_ids"].clone()
    labels[:, :n_prompt] = -100  # same prompt (and image size) for every item: left part identical
    labels[enc["attention_mask"] == 0] = -100
    enc["labels"] = labels
    return enc


@torch.no_grad()
def generate_captions(model: Any, processor: Any, images: list, max_new_tokens: int = 24) -> list[str]:
    return generate_after(model, processor, images, [caption_prompt(processor)] * len(images), max_new_tokens)


@torch.no_grad()
def generate_after(
    model: Any, processor: Any, images: list, prompts: list[str], max_new_tokens: int = 24
) -> list[str]:
    """Greedy continuations of chat prompts (one image each; left-padded, so prompts may differ in length)."""
    tok = processor.tokenizer
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        suppress_tokens=suppressed_ids(tok),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    return decode_captions(tok, out[:, enc["input_ids"].shape[1] :])


def suppressed_ids(tokenizer: Any) -> list[int]:
    """Special tokens a caption must not contain (all but the closing <|im_end|>)."""
    return [tokenizer.convert_tokens_to_ids(s) for s in SPECIALS if s != "<|im_end|>"]


def decode_captions(tokenizer: Any, ids: torch.Tensor) -> list[str]:
    """Generated token ids -> caption strings (word-level decoding spaces the commas: ' ,' -> ',')."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [" ".join(t.replace(" ,", ",").split()) for t in texts]


def truth_rate(captions: list[str], scenes: list, world: World) -> dict[str, float]:
    parsed = [parse_claim(c) for c in captions]
    true = [p is not None and holds(p, s, world.relation_margin) for p, s in zip(parsed, scenes)]
    return {
        "truth_rate": 100 * sum(true) / len(true),
        "parse_rate": 100 * sum(p is not None for p in parsed) / len(parsed),
    }


def synthetic_pairs(world: World, split: str, n: int, image_size: int = 112, offset: int = 0):
    from datamodules.sources.synthetic import SyntheticWorldSource

    src = SyntheticWorldSource(
        world,
        num_train=n if split == "train" else 0,
        num_val=0,
        num_test=n if split == "test" else 0,
        image_size=image_size,
        scene_offset=offset,
    )
    recs = src.records(split)
    return [r.image.load() for r in recs], [r.caption for r in recs], [r.image.scene for r in recs]


def train_sft(
    model: Any,
    processor: Any,
    images: list,
    captions: list[str],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 100,
) -> list[float]:
    """Plain AdamW SFT on random mini-batches; returns the loss curve (one value per step)."""

    def batch(rng: random.Random) -> dict[str, torch.Tensor]:
        idx = rng.sample(range(len(images)), batch_size)
        return sft_batch(processor, [images[i] for i in idx], [captions[i] for i in idx])

    return sft_loop(model, batch, steps=steps, lr=lr, seed=seed, log_every=log_every, tag="sft")


def sft_loop(
    model: Any,
    batch: Any,
    *,
    steps: int,
    lr: float,
    seed: int = 0,
    log_every: int = 100,
    tag: str = "sft",
) -> list[float]:
    """AdamW (weight decay 0.01, one-cycle LR, grad-norm clip 1) over `steps` batches from `batch(rng)` (inputs with
    labels); the model is left in eval mode. Returns the loss per step."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batch(rng)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            log.info("%s step %d/%d loss %.3f", tag, step + 1, steps, sum(losses[-log_every:]) / log_every)
    model.eval()
    return losses


class TinyCaptioner:
    """A captioner folder (`build_tiny_captioner` + SFT, saved by `main`; or any Qwen2/2.5-VL folder whose processor
    works with `caption_prompt`) as a caption backend: `caption(images, records, seeds)` like the preprocessing
    stages' VLM backend. Greedy decoding; the records and seeds are not used."""

    def __init__(self, path: str, max_new_tokens: int = 24, batch_size: int = 32) -> None:
        self.path, self.max_new_tokens, self.batch_size = str(path), max_new_tokens, batch_size
        self._loaded: tuple[Any, Any] | None = None

    def identity(self) -> dict:
        from datamodules.cache import model_fingerprint

        return {"backend": "tiny_captioner", **model_fingerprint(self.path, None), "max": self.max_new_tokens}

    def caption(self, images: list, records: list, seeds: list[int]) -> list[str | None]:
        if self._loaded is None:
            self._loaded = load_captioner(self.path)
            self._loaded[0].eval()
        model, processor = self._loaded
        out: list[str | None] = []
        for s in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[s : s + self.batch_size]]
            out += [c or None for c in generate_captions(model, processor, chunk, self.max_new_tokens)]
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("logs/captioner"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    world = World(seed=0)
    path = build_tiny_captioner(args.out / "init", seed=args.seed)
    model, processor = load_captioner(path)
    tr_img, tr_cap, _ = synthetic_pairs(world, "train", args.train)
    te_img, _, te_scenes = synthetic_pairs(world, "test", args.test)
    before = truth_rate(generate_captions(model, processor, te_img), te_scenes, world)
    t0 = time.perf_counter()
    losses = train_sft(
        model,
        processor,
        tr_img,
        tr_cap,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    wall = time.perf_counter() - t0
    caps = generate_captions(model, processor, te_img)
    after = truth_rate(caps, te_scenes, world)
    model.save_pretrained(args.out / "sft")
    processor.save_pretrained(args.out / "sft")
    res = {
        "steps": args.steps,
        "seed": args.seed,
        "train_pairs": args.train,
        "test_scenes": args.test,
        "before": before,
        "after_sft": after,
        "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "train_seconds": round(wall, 1),
        "examples": caps[:5],
    }
    (args.out / "sft_result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
