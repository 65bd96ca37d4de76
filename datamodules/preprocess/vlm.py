"""The captioner backend through a transformers vision-language model (`image-text-to-text`): Qwen2.5-VL,
LLaVA, SmolVLM, … by hub id or local folder (loaded with AutoProcessor + AutoModelForImageTextToText).

    TransformersVLM(model="/models/Qwen2.5-VL-3B-Instruct",
                    caption_prompt="Describe the image in one short sentence.",
                    repair_prompt="The caption \"{caption}\" may be wrong. Look at the image again and write a "
                                  "corrected one-sentence caption.")

One prompt per task, with `{caption}` (the current caption, for repair) filled in, wrapped in the model's chat
template with the image; batched with left padding; greedy or sampled decoding seeded per item. The answer is cut to
its first line, stripped of quotes, and rejected (None: counted by the stage as a failure) when empty or longer than
`max_words`. Instances with the same model, device and dtype share one loaded model (the caption and repair stages
load it once).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image

from datamodules.cache import model_fingerprint
from datamodules.records import Record

log = logging.getLogger(__name__)

_LOADED: dict[tuple, tuple[Any, Any]] = {}


def _load(model: str, revision: str | None, device: str, dtype: torch.dtype, trust_remote_code: bool):
    key = (model, revision, device, str(dtype))
    if key not in _LOADED:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kw = {"revision": revision} if revision else {}
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code, **kw)
        net = AutoModelForImageTextToText.from_pretrained(
            model, dtype=dtype, trust_remote_code=trust_remote_code, **kw
        )
        net.to(device).eval()
        tok = getattr(processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # batched generation continues every row at the end
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        _LOADED[key] = (processor, net)
    return _LOADED[key]


class TransformersVLM:
    """Args:
    model: hub id or local folder. revision: hub revision (part of the cache key).
    caption_prompt / repair_prompt: user prompts; `{caption}` is replaced by the current caption.
    system_prompt: optional system message.
    max_new_tokens / do_sample / temperature / top_p: decoding (sampling is seeded per item).
    max_words: answers longer than this are rejected.
    suppress_tokens: token ids never generated (e.g. image placeholders of tiny test models).
    device / dtype: auto = cuda + bfloat16 when available, else cpu + float32.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        caption_prompt: str = "Describe this image in one short sentence.",
        repair_prompt: str = (
            'A caption of this image reads: "{caption}". It may be wrong. Look at the image again and write one '
            "short sentence that describes it correctly."
        ),
        system_prompt: str | None = None,
        max_new_tokens: int = 40,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_words: int = 60,
        suppress_tokens: list[int] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        if "{caption}" not in repair_prompt:
            raise ValueError("repair_prompt must contain '{caption}' (the caption to revise)")
        self.model, self.revision = model, revision
        self.prompts = {"caption": caption_prompt, "repair": repair_prompt}
        self.system_prompt = system_prompt
        self.gen = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.gen |= {"temperature": temperature, "top_p": top_p}
        self.max_words = max_words
        self.suppress_tokens = list(suppress_tokens or [])
        cuda = torch.cuda.is_available()
        self.device = ("cuda" if cuda else "cpu") if device == "auto" else device
        self.dtype = (
            (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
            if dtype == "auto"
            else getattr(torch, dtype)
        )
        self.trust_remote_code = trust_remote_code

    def identity(self) -> dict:
        return {
            "backend": "transformers_vlm",
            **model_fingerprint(self.model, self.revision),
            "prompts": self.prompts,
            "system": self.system_prompt,
            "gen": self.gen,
            "suppress": self.suppress_tokens,
            "dtype": str(self.dtype),
        }

    def messages(self, task: str, caption: str | None) -> list[dict]:
        text = self.prompts[task].replace("{caption}", caption or "")
        msgs = (
            [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}]
            if self.system_prompt
            else []
        )
        return msgs + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    def prompts_for(self, task: str, records: list[Record]) -> list[str]:
        processor, _ = _load(self.model, self.revision, self.device, self.dtype, self.trust_remote_code)
        return [
            processor.apply_chat_template(
                self.messages(task, r.caption), add_generation_prompt=True, tokenize=False
            )
            for r in records
        ]

    def clean(self, text: str) -> str | None:
        lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
        if not lines:
            return None
        out = lines[0].strip().strip('"').strip("'").strip()
        if not out or len(out.split()) > self.max_words:
            return None
        return out

    @torch.no_grad()
    def _run(self, task: str, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list:
        processor, net = _load(self.model, self.revision, self.device, self.dtype, self.trust_remote_code)
        texts = self.prompts_for(task, records)
        inputs = processor(
            text=texts, images=[im.convert("RGB") for im in images], padding=True, return_tensors="pt"
        ).to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        kw = dict(self.gen)
        if self.suppress_tokens:
            kw["suppress_tokens"] = self.suppress_tokens
        tok = getattr(processor, "tokenizer", processor)
        if getattr(tok, "pad_token_id", None) is not None:
            kw["pad_token_id"] = tok.pad_token_id
        with torch.random.fork_rng(devices=[]):
            if self.gen["do_sample"]:
                # one generate call per batch: seed it from the items' seeds (deterministic for a given batch)
                torch.manual_seed(hash(tuple(seeds)) & 0x7FFFFFFF)
            out = net.generate(**inputs, **kw)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [self.clean(t) for t in processor.batch_decode(new, skip_special_tokens=True)]

    def caption(self, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list[str | None]:
        return self._run("caption", images, records, seeds)

    def repair(self, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list[str | None]:
        return self._run("repair", images, records, seeds)
