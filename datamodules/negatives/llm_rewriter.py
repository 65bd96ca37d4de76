"""T'_C by an LLM: any transformers causal LM (hub id or local path) rewrites a caption with one kind of change
(colour, quantity, position, verb, negation, swaps), one prompt template per kind, batched greedy or sampled
decoding. Every output is validated — different from the input, plausible length, and the requested kind of
change actually present — and rejected outputs are masked and counted. Raw outputs are cached on disk
(content-addressed by model, revision, template, decoding parameters and caption), so a second epoch or a re-run
makes no model calls; `fill()` generates ahead of training, split across ranks.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import Literal

import torch
from PIL import Image

from datamodules.cache import DiskCache, cache_key, model_fingerprint, owns
from datamodules.lexicon import COLORS, NUMBERS, POSITION_PAIRS, SIZES, VERB_GROUPS
from datamodules.negatives.base import NegativeGenerator
from datamodules.records import Negative, Record

log = logging.getLogger(__name__)

KIND_INSTRUCTIONS = {
    "color": "Change exactly one colour word",
    "quantity": "Change exactly one number or quantity",
    "position": "Change exactly one spatial relation (for example left/right, above/below, in front of/behind)",
    "verb": "Change exactly one action verb",
    "negation": "Turn the caption from affirmative to negative (or from negative to affirmative)",
    "swap_attributes": "Swap two attributes (such as colours) between two objects",
    "swap_objects": "Swap the positions of two objects in the sentence",
}
DEFAULT_TEMPLATE = (
    "Rewrite the image caption so that it no longer describes the same image. {instruction}; keep every other "
    "word the same. Answer with the new caption only.\nCaption: {caption}\nNew caption:"
)
_NEGATORS = {"no", "not", "without", "none", "nobody", "nothing", "never", "n't"}
_POSITION_WORDS = {w for pair in POSITION_PAIRS for phrase in pair for w in phrase.split()} - {
    "to",
    "the",
    "of",
    "on",
    "in",
}
_VERBS = {v for g in VERB_GROUPS for v in g}


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z']+|\d+", text.lower())


def validate(original: str, output: str, kind: str) -> tuple[str | None, str]:
    """Returns (clean negative or None, reason)."""
    out = output.strip().split("\n", 1)[0].strip().strip("\"'").strip()
    out = re.sub(r"^(new caption|caption)\s*:\s*", "", out, flags=re.I).strip()
    if not out:
        return None, "empty"
    a, b = _tokens(original), _tokens(out)
    if a == b:
        return None, "unchanged"
    if not 0.5 <= len(b) / max(len(a), 1) <= 2.0:
        return None, "length"

    def changed(vocab: set[str]) -> bool:
        return [w for w in a if w in vocab] != [w for w in b if w in vocab] and any(w in vocab for w in b)

    ok = {
        "color": lambda: changed(set(COLORS)),
        "quantity": lambda: changed(set(NUMBERS) | {"a", "an"} | {str(i) for i in range(100)}),
        "position": lambda: changed(_POSITION_WORDS),
        "verb": lambda: (
            changed(_VERBS) or {w for w in a if w.endswith("ing")} != {w for w in b if w.endswith("ing")}
        ),
        "negation": lambda: (
            bool(_NEGATORS & set(a)) != bool(_NEGATORS & set(b) or any(w.endswith("n't") for w in b))
        ),
        "swap_attributes": lambda: sorted(a) == sorted(b) and changed(set(COLORS) | set(SIZES)),
        "swap_objects": lambda: sorted(a) == sorted(b),
    }[kind]()
    return (out, "ok") if ok else (None, f"not_a_{kind}_change")


class LLMRewriter(NegativeGenerator):
    """Args:
    model: causal LM hub id or local folder. revision: its revision (cache key).
    kinds: which changes to ask for; num_per_caption: negatives per caption (distinct kinds).
    templates: per-kind prompt templates ({caption}, {instruction}); missing kinds use the default template.
    max_new_tokens / temperature (0 = greedy) / top_p: decoding.
    batch_size: prompts per generate call when filling ahead.
    cache_dir: output cache (required). fill: online | ahead | skip (default ahead).
    device / dtype: auto = cuda + bfloat16 when available, else cpu + float32.
    trust_remote_code: never on by default.
    """

    name = "llm_rewriter"
    version = "1"

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        kinds: Sequence[str] = ("color", "quantity", "position", "verb", "negation"),
        num_per_caption: int = 1,
        templates: dict[str, str] | None = None,
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        cache_dir: str = "data/cache",
        fill: Literal["online", "ahead", "skip"] = "ahead",
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(kinds) - set(KIND_INSTRUCTIONS)
        if unknown:
            raise ValueError(
                f"llm_rewriter.kinds: unknown {sorted(unknown)}; valid: {sorted(KIND_INSTRUCTIONS)}"
            )
        if fill not in ("online", "ahead", "skip"):
            raise ValueError(f"llm_rewriter.fill must be online|ahead|skip, got {fill!r}")
        self.model_id, self.revision = model, revision
        self.kinds, self.num_per_caption = list(kinds), num_per_caption
        self.templates = {k: (templates or {}).get(k, DEFAULT_TEMPLATE) for k in self.kinds}
        self.decoding = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.batch_size = batch_size
        self.cache = DiskCache(cache_dir, "llm_rewriter")
        self.fill_policy = fill
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self._model = self._tok = None

    # -- model ------------------------------------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            kw = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
            self._tok = AutoTokenizer.from_pretrained(self.model_id, **kw)
            self._tok.padding_side = "left"
            if self._tok.pad_token is None:
                self._tok.pad_token = self._tok.eos_token
            dtype = (
                (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
                if self.dtype == "auto"
                else getattr(torch, self.dtype)
            )
            self._model = (
                AutoModelForCausalLM.from_pretrained(self.model_id, dtype=dtype, **kw).to(self.device).eval()
            )
        return self._model, self._tok

    def prompt(self, caption: str, kind: str) -> str:
        text = self.templates[kind].format(caption=caption, instruction=KIND_INSTRUCTIONS[kind])
        _, tok = self._load()
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    @torch.no_grad()
    def complete(self, prompts: list[str]) -> list[str]:
        model, tok = self._load()
        enc = tok(prompts, return_tensors="pt", padding=True).to(self.device)
        sample = self.decoding["temperature"] > 0
        kw = {
            "do_sample": sample,
            "max_new_tokens": self.decoding["max_new_tokens"],
            "pad_token_id": tok.pad_token_id,
        }
        if sample:
            kw.update(temperature=self.decoding["temperature"], top_p=self.decoding["top_p"])
        out = model.generate(**enc, **kw)
        self.stats["calls"] += 1
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    # -- cache ------------------------------------------------------------------------------------------------
    def key(self, caption: str, kind: str) -> str:
        return cache_key(
            generator=self.name,
            version=self.version,
            **model_fingerprint(self.model_id, self.revision),
            template=self.templates[kind],
            kind=kind,
            decoding=self.decoding,
            caption=caption,
        )

    def _choose_kinds(self, rng: random.Random) -> list[str]:
        kinds = list(self.kinds)
        rng.shuffle(kinds)
        return kinds[: self.num_per_caption]

    def generate(self, record: Record, image: Image.Image, rng: random.Random) -> list[Negative]:
        out: list[Negative] = []
        for kind in self._choose_kinds(rng):
            key = self.key(record.caption, kind)
            raw = self.cache.get_json(key)
            if raw is None:
                self.stats["cache_miss"] += 1
                if self.fill_policy != "online":
                    self.stats["masked"] += 1
                    continue
                raw = self.complete([self.prompt(record.caption, kind)])[0]
                self.cache.put_json(key, raw)
            else:
                self.stats["cache_hit"] += 1
            neg, reason = validate(record.caption, raw, kind)
            if neg is None:
                self.stats[f"rejected_{reason}"] += 1
                self.stats["masked"] += 1
                continue
            if self.leaks(neg):  # counted as rejected_heldout
                self.stats["masked"] += 1
                continue
            out.append(self.text(f"compositional/{kind}", neg))
        return out

    def fill(
        self, records: Sequence[Record], *, seed: int, rank: int = 0, world_size: int = 1
    ) -> dict[str, int]:
        """Generates the missing outputs this rank owns, in batches; same kind choice as training."""
        todo: list[tuple[str, str, str]] = []
        for rec in records:
            rng = self.rng(seed, rec)
            for kind in self._choose_kinds(rng):
                key = self.key(rec.caption, kind)
                if owns(key, rank, world_size) and key not in self.cache:
                    todo.append((key, rec.caption, kind))
        todo = list({k: (k, c, kd) for k, c, kd in todo}.values())
        for s in range(0, len(todo), self.batch_size):
            chunk = todo[s : s + self.batch_size]
            outs = self.complete([self.prompt(c, kd) for _, c, kd in chunk])
            for (key, _, _), raw in zip(chunk, outs):
                self.cache.put_json(key, raw)
        log.info("llm_rewriter fill (rank %d/%d): %d captions rewritten", rank, world_size, len(todo))
        return {"generated": len(todo)}
