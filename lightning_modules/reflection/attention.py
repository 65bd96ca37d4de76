"""Visual-attention measures for transformers VLMs (Reflection-V style; the paper's formula is unpublished, so the
parameters are ours): how much of each generated token's attention lands on the image, and how much the next-token
distribution depends on the image at all.

    meter = VisualAttentionMeter(layers=None, sink_tokens=1)          # all decoder layers, first key = sink
    with meter.measure(model, image_mask=input_ids == image_token_id, rows=response_len):
        model(input_ids=..., pixel_values=..., ...)                     # teacher-forced prompt + response
    share = meter.share()          # [batch, response_len]: image share of attention mass, heads and layers averaged
    ratio = late_early_ratio(share)   # mean share over the last third of the response / over the first third

How: a function registered with transformers' `AttentionInterface` ("visual_share") replaces the decoder's attention
while measuring. It returns SDPA's output (so the forward is unchanged) and, for the measured layers only, computes
the attention weights of the last `rows` query positions (the response), reduces them at once to per-row image share
(heads averaged) and drops them: memory O(heads · rows · keys) for one layer at a time, instead of `output_attentions`'
layers · heads · L² kept for the whole forward. Attention sinks: the first `sink_tokens` key positions (BOS / system
prompt start, where decoders park attention) are taken out of the denominator, so the share is of the non-sink mass.
A test checks it against eager attention with `output_attentions=True`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

NAME = "visual_share"
_ACTIVE: list[VisualAttentionMeter] = []


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def visual_share_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An `AttentionInterface` function: SDPA's output, plus the active meter's per-layer image share."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    if _ACTIVE and getattr(module, "layer_idx", None) is not None:
        _ACTIVE[-1]._record(module, query, key, attention_mask, scaling)
    return out, None


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, visual_share_attention)
    return NAME


class VisualAttentionMeter:
    """Args:
    layers: decoder layer indices to measure (None: all).
    sink_tokens: leading key positions treated as attention sinks and left out of the denominator.
    """

    def __init__(self, layers: list[int] | None = None, sink_tokens: int = 1) -> None:
        self.layers = None if layers is None else set(layers)
        self.sink_tokens = sink_tokens
        self.image_mask: torch.Tensor | None = None  # [B, L] bool: key positions holding image tokens
        self.rows = 0
        self.per_layer: dict[int, torch.Tensor] = {}  # layer -> [B, rows] share (heads averaged)

    @contextlib.contextmanager
    def measure(self, model: Any, image_mask: torch.Tensor, rows: int) -> Iterator[VisualAttentionMeter]:
        """Within the block, the model's text decoder runs the measuring attention for the last `rows` positions."""
        register()
        self.image_mask, self.rows, self.per_layer = image_mask.bool(), rows, {}
        text_cfg = getattr(model.config, "text_config", model.config)
        previous = text_cfg._attn_implementation
        model.set_attn_implementation({"text_config": NAME} if text_cfg is not model.config else NAME)
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.remove(self)
            model.set_attn_implementation(
                {"text_config": previous} if text_cfg is not model.config else previous
            )

    @torch.no_grad()
    def _record(self, module, query, key, attention_mask, scaling) -> None:
        layer = module.layer_idx
        if self.layers is not None and layer not in self.layers:
            return
        b, h, lq, d = query.shape
        lk = key.shape[2]
        rows = min(self.rows, lq)
        k = _repeat_kv(key, getattr(module, "num_key_value_groups", h // key.shape[1])).float()
        q = query[:, :, lq - rows :].float()
        scores = q @ k.transpose(-1, -2) * (scaling if scaling is not None else 1 / math.sqrt(d))
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, lq - rows : lq, :lk].float()
        else:  # causal: query row at absolute position p sees keys <= p
            pos = torch.arange(lk - rows, lk, device=q.device)[:, None]
            scores = scores.masked_fill(torch.arange(lk, device=q.device)[None, :] > pos, float("-inf"))
        w = scores.softmax(-1)  # [B, H, rows, Lk]
        img = self.image_mask[:, None, None, :lk].to(w.device)
        on_image = (w * img).sum(-1)
        sink = w[..., : self.sink_tokens].sum(-1) if self.sink_tokens else torch.zeros_like(on_image)
        share = on_image / (1 - sink).clamp_min(1e-6)
        self.per_layer[layer] = share.mean(1).cpu()  # heads averaged

    def share(self) -> torch.Tensor:
        """[B, rows]: the image share of each response token's (non-sink) attention, averaged over layers."""
        if not self.per_layer:
            raise RuntimeError("visual attention: nothing measured (no decoder layer ran inside measure())")
        return torch.stack([self.per_layer[k] for k in sorted(self.per_layer)]).mean(0)


def share_from_attentions(
    attentions: tuple[torch.Tensor, ...],
    image_mask: torch.Tensor,
    rows: int,
    sink_tokens: int = 1,
    layers: list[int] | None = None,
) -> torch.Tensor:
    """The same measure from eager `output_attentions` (the reference the meter is tested against)."""
    out = []
    for i, a in enumerate(attentions):
        if layers is not None and i not in layers:
            continue
        w = a[:, :, -rows:].float()
        on_image = (w * image_mask[:, None, None, : w.shape[-1]]).sum(-1)
        sink = w[..., :sink_tokens].sum(-1) if sink_tokens else torch.zeros_like(on_image)
        out.append((on_image / (1 - sink).clamp_min(1e-6)).mean(1))
    return torch.stack(out).mean(0)


def late_early_ratio(share: torch.Tensor) -> torch.Tensor:
    """Per sequence: mean share over the last third of the response / mean over the first third (> 1: the model
    looks at the image more as it goes on, the behaviour Reflection-V rewards)."""
    n = share.shape[-1]
    third = max(1, n // 3)
    return share[..., -third:].mean(-1) / share[..., :third].mean(-1).clamp_min(1e-8)


def hellinger(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Hellinger distance between distributions along the last dim, in [0, 1]: ||sqrt p - sqrt q||_2 / sqrt 2
    (= sqrt(1 - sum sqrt(p q)), in the form without cancellation: exactly 0 for p = q)."""
    return (p.clamp_min(0).sqrt() - q.clamp_min(0).sqrt()).norm(dim=-1) / math.sqrt(2)


@torch.no_grad()
def visual_dependency(logits_with: torch.Tensor, logits_without: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-token distributions of the same response with and without the image ([..., rows, V]
    logits each): the Hellinger distance per response token. 0: the image changes nothing."""
    return hellinger(logits_with.float().softmax(-1), logits_without.float().softmax(-1))


@torch.no_grad()
def measure_response(
    model: Any,
    processor: Any,
    image: Any,
    prompt: str,
    response: str,
    meter: VisualAttentionMeter | None = None,
) -> dict[str, torch.Tensor]:
    """Teacher-forced measures of one (image, prompt, response) with a transformers VLM and its processor:
    `share` [rows] (image share of the attention of the position that produced each response token), `ratio`
    (late/early), `dependency` [rows] (Hellinger distance between the next-token distributions with and without
    the image) and their means."""
    meter = meter or VisualAttentionMeter()

    def chat(with_image: bool) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        return processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True
        )

    n = len(processor.tokenizer(response, add_special_tokens=False).input_ids)
    if n == 0:
        raise ValueError("measure_response: empty response")
    device = next(model.parameters()).device
    with_img = processor(text=[chat(True) + response], images=[image], return_tensors="pt").to(device)
    without = processor(text=[chat(False) + response], return_tensors="pt").to(device)
    if "pixel_values" in with_img and with_img["pixel_values"].is_floating_point():
        with_img["pixel_values"] = with_img["pixel_values"].to(model.dtype)
    image_token = model.config.image_token_id
    with meter.measure(model, with_img["input_ids"] == image_token, rows=n + 1):
        logits_with = model(**with_img).logits
    logits_without = model(**without).logits
    share = meter.share()[0, :-1]  # rows that produced the n response tokens
    dep = visual_dependency(logits_with[0, -n - 1 : -1], logits_without[0, -n - 1 : -1])
    return {
        "share": share,
        "share_mean": share.mean(),
        "ratio": late_early_ratio(share[None])[0],
        "dependency": dep,
        "dependency_mean": dep.mean(),
    }
