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
        question_prompt: str = (
            'A caption of an image reads: "{caption}". Write up to {n} short questions, one per line, that check '
            "the colours, counts and positions this caption claims."
        ),
        answer_prompt: str = "{question} Answer in a few words.",
        summary_prompt: str = (
            'A caption of this image reads: "{caption}". Looking again at the image: {answers} Write one short '
            "sentence that describes the image correctly."
        ),
        max_questions: int = 3,
        reflect_rounds: int = 2,
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
        for name, prompt, key in (
            ("question_prompt", question_prompt, "{caption}"),
            ("answer_prompt", answer_prompt, "{question}"),
            ("summary_prompt", summary_prompt, "{answers}"),
        ):
            if key not in prompt:
                raise ValueError(f"{name} must contain '{key}'")
        self.reflect_prompts = {
            "question": question_prompt,
            "answer": answer_prompt,
            "summary": summary_prompt,
        }
        if max_questions < 1 or reflect_rounds < 1:
            raise ValueError("max_questions and reflect_rounds must be >= 1")
        self.max_questions, self.reflect_rounds = max_questions, reflect_rounds

    def identity(self) -> dict:
        return {
            "backend": "transformers_vlm",
            **model_fingerprint(self.model, self.revision),
            "prompts": self.prompts,
            "reflect": {**self.reflect_prompts, "n": self.max_questions, "rounds": self.reflect_rounds},
            "system": self.system_prompt,
            "gen": self.gen,
            "suppress": self.suppress_tokens,
            "dtype": str(self.dtype),
        }

    def messages(self, task: str, caption: str | None) -> list[dict]:
        return self.chat(self.prompts[task].replace("{caption}", caption or ""), with_image=True)

    def chat(self, text: str, *, with_image: bool) -> list[dict]:
        msgs = (
            [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}]
            if self.system_prompt
            else []
        )
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
        return msgs + [{"role": "user", "content": content}]

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
    def generate(
        self, chats: list[list[dict]], images: list[Image.Image] | None, seeds: list[int]
    ) -> list[str]:
        """Raw decoded answers of a batch of chats (with one image each, or text only when images is None)."""
        processor, net = _load(self.model, self.revision, self.device, self.dtype, self.trust_remote_code)
        texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = [im.convert("RGB") for im in images]
        inputs = processor(**kwargs).to(self.device)
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
        return processor.batch_decode(new, skip_special_tokens=True)

    def _run(self, task: str, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list:
        chats = [self.messages(task, r.caption) for r in records]
        return [self.clean(t) for t in self.generate(chats, images, seeds)]

    def caption(self, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list[str | None]:
        return self._run("caption", images, records, seeds)

    def repair(self, images: list[Image.Image], records: list[Record], seeds: list[int]) -> list[str | None]:
        return self._run("repair", images, records, seeds)

    def questions(self, text: str) -> list[str]:
        """The requester's questions: non-empty lines (list markers stripped), at most `max_questions`."""
        out = []
        for line in text.splitlines():
            q = line.strip().lstrip("-*0123456789.) ").strip()
            if q:
                out.append(q if q.endswith("?") else q + "?")
        return out[: self.max_questions]

    def reflect(
        self, images: list[Image.Image], records: list[Record], seeds: list[int]
    ) -> list[dict | None]:
        """Look again (the `reflect` stage): per round, the VLM *without* the image asks questions about the
        caption (requester), the VLM *with* the image answers each (responder), and with the image and the answers
        rewrites the caption (summariser); an item stops when its revision equals its caption. Batched over items."""
        caps = [r.caption for r in records]
        traces: list[list[dict]] = [[] for _ in records]
        failed = [False] * len(records)
        active = list(range(len(records)))
        p = self.reflect_prompts
        for rnd in range(self.reflect_rounds):
            if not active:
                break
            asked = self.generate(
                [
                    self.chat(
                        p["question"].replace("{caption}", caps[i]).replace("{n}", str(self.max_questions)),
                        with_image=False,
                    )
                    for i in active
                ],
                None,
                [seeds[i] + rnd for i in active],
            )
            qs = {i: self.questions(t) or [f'Is this true: "{caps[i]}"?'] for i, t in zip(active, asked)}
            flat = [(i, q) for i in active for q in qs[i]]
            answers = self.generate(
                [self.chat(p["answer"].replace("{question}", q), with_image=True) for _, q in flat],
                [images[i] for i, _ in flat],
                [seeds[i] + rnd for i, _ in flat],
            )
            qa: dict[int, list[dict]] = {i: [] for i in active}
            for (i, q), a in zip(flat, answers):
                qa[i].append({"q": q, "a": (self.clean(a) or "").rstrip(".")})
            summaries = self.generate(
                [
                    self.chat(
                        p["summary"]
                        .replace("{caption}", caps[i])
                        .replace("{answers}", " ".join(f"{x['q']} {x['a']}." for x in qa[i])),
                        with_image=True,
                    )
                    for i in active
                ],
                [images[i] for i in active],
                [seeds[i] + rnd for i in active],
            )
            still = []
            for i, text in zip(active, summaries):
                new = self.clean(text)
                if new is None:
                    failed[i] = True
                    continue
                traces[i].append({"round": rnd, "qa": qa[i], "before": caps[i], "revised": new})
                if new != caps[i]:
                    caps[i] = new
                    still.append(i)
            active = still
        return [
            None
            if failed[i] and not traces[i]
            else {"caption": caps[i], "initial": r.caption, "trace": traces[i]}
            for i, r in enumerate(records)
        ]


class AttentionScorer:
    """The visual-attention meter of the preprocessing pipeline (`preprocess.attention`): for each (image,
    caption), the mean share of a VLM's attention on the image tokens at the positions that produce the caption's
    tokens (teacher-forced; `lightning_modules.reflection.attention.measure_response`), heads and `layers`
    averaged, the first `sink_tokens` key positions left out as attention sinks.

    Args: model (hub id or folder; shares the loaded model with TransformersVLM), prompt (the caption prompt the
    caption answers), layers, sink_tokens, revision, device, dtype, trust_remote_code.
    """

    def __init__(
        self,
        model: str,
        *,
        prompt: str = "Describe this image in one short sentence.",
        layers: list[int] | None = None,
        sink_tokens: int = 1,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.vlm = TransformersVLM(
            model, revision=revision, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.prompt, self.layers, self.sink_tokens = prompt, layers, sink_tokens

    def identity(self) -> dict:
        return {
            "backend": "attention_scorer",
            **model_fingerprint(self.vlm.model, self.vlm.revision),
            "prompt": self.prompt,
            "layers": self.layers,
            "sink_tokens": self.sink_tokens,
        }

    def score(self, images: list[Image.Image], captions: list[str]) -> torch.Tensor:
        from lightning_modules.reflection.attention import VisualAttentionMeter, measure_response

        v = self.vlm
        processor, net = _load(v.model, v.revision, v.device, v.dtype, v.trust_remote_code)
        meter = VisualAttentionMeter(self.layers, self.sink_tokens)
        out = []
        for image, caption in zip(images, captions):
            m = measure_response(net, processor, image.convert("RGB"), self.prompt, caption, meter)
            out.append(float(m["share_mean"]))
        return torch.tensor(out)
