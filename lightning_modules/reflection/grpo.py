"""GRPO for the captioner (Reflection-V-style reward), as a LightningModule.

Per image, G captions are sampled from the policy; each gets a reward

    r = w_sim · sim(image, caption)                               the gate's similarity (a CLIP scorer)
      + w_margin · (sim(caption) − max sim(its hard negatives))   the project's rule rewrites of the sampled caption
      + w_att · attention share of the caption's tokens on the image, granted only when sim ≥ att_threshold
      − w_len · max(0, tokens − target_len)

the advantage is (r − group mean) / (group std + ε) within the image's group, and the loss is the clipped-ratio
surrogate plus β · KL(policy ‖ frozen reference) (the k3 estimator, per response token). One optimisation step per
sampled batch, so the ratio is 1 at the step (the clip matters with `updates_per_batch > 1`). LoRA is optional
(`lora_rank > 0`, peft). Every reward term, the attention statistics, the KL and — on the synthetic world, where
it is exact — the caption truth rate of the samples are logged.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from datamodules.records import Record
from datamodules.world import World
from datamodules.world.claims import holds, parse_claim
from lightning_modules.reflection.attention import VisualAttentionMeter
from lightning_modules.reflection.captioner import caption_prompt, decode_captions, suppressed_ids


def group_advantages(rewards_BG: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(r − mean) / (std + eps) per row (one row = one image's G samples); equal rewards give 0."""
    mean = rewards_BG.mean(-1, keepdim=True)
    std = rewards_BG.std(-1, keepdim=True, unbiased=False)
    return (rewards_BG - mean) / (std + eps)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy ‖ reference) estimate exp(ref − logp) − (ref − logp) − 1: ≥ 0, exactly 0 where equal."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp, old_logp, adv, clip: float = 0.2) -> torch.Tensor:
    ratio = torch.exp(logp - old_logp)
    return -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)


class CaptionReward:
    """The reward terms of sampled captions. `scorer`: a ClipScorer (the gate); `negatives`: a generator of rule
    rewrites (`TextRules`) for the margin term; `policy` + `processor`: for the attention term (None: off).
    `w_truth` with `world`: +1 for a caption true of its scene (`holds()`; the batch must carry scene graphs) —
    an oracle, for diagnosis only: it shows what the optimiser can do when the reward is right."""

    def __init__(
        self,
        scorer: Any,
        negatives: Any | None = None,
        *,
        w_sim: float = 1.0,
        w_margin: float = 1.0,
        w_att: float = 0.5,
        att_threshold: float = 0.0,
        w_len: float = 0.02,
        target_len: int = 16,
        w_truth: float = 0.0,
        world: World | None = None,
    ) -> None:
        if w_truth and world is None:
            raise ValueError("CaptionReward: w_truth needs the world (scene graphs are judged with holds())")
        self.scorer, self.negatives, self.world = scorer, negatives, world
        self.w = {"sim": w_sim, "margin": w_margin, "att": w_att, "len": w_len, "truth": w_truth}
        self.att_threshold, self.target_len = att_threshold, target_len

    @torch.no_grad()
    def __call__(
        self,
        images: list,
        captions: list[str],
        n_tokens: torch.Tensor,
        att_share: torch.Tensor | None = None,
        scenes: list | None = None,
    ) -> dict[str, torch.Tensor]:
        img = self.scorer.encode_images(images)
        txt = self.scorer.encode_texts([c or "." for c in captions])
        sim = (img * txt).sum(-1)
        margin = torch.zeros_like(sim)
        if self.negatives is not None:
            for i, (im, cap) in enumerate(zip(images, captions)):
                negs = [
                    n.payload
                    for n in self.negatives(Record(f"s{i}", None, cap), im, random.Random(i))
                    if n.modality == "text"
                ]
                self.negatives.pop_stats()
                if negs:
                    margin[i] = sim[i] - (img[i : i + 1] * self.scorer.encode_texts(negs)).sum(-1).max()
        att = torch.zeros_like(sim) if att_share is None else att_share.float() * (sim >= self.att_threshold)
        length = (n_tokens.float() - self.target_len).clamp_min(0)
        total = self.w["sim"] * sim + self.w["margin"] * margin + self.w["att"] * att - self.w["len"] * length
        out = {"reward": total, "sim": sim, "margin": margin, "attention": att, "length_penalty": length}
        if self.w["truth"]:
            if scenes is None:
                raise ValueError("CaptionReward: w_truth is set but the batch has no scene graphs")
            truth = torch.tensor(
                [
                    float((c := parse_claim(t)) is not None and holds(c, s, self.world.relation_margin))
                    for t, s in zip(captions, scenes)
                ]
            )
            out["truth_oracle"] = truth
            out["reward"] = total + self.w["truth"] * truth
        return out


class CaptionerGRPO(L.LightningModule):
    def __init__(
        self,
        policy: Any,
        processor: Any,
        reward: CaptionReward,
        *,
        group_size: int = 4,
        beta: float = 0.04,
        clip: float = 0.2,
        lr: float = 1e-5,
        max_new_tokens: int = 24,
        temperature: float = 1.0,
        lora_rank: int = 0,
        world: World | None = None,
    ) -> None:
        super().__init__()
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            policy = get_peft_model(policy, LoraConfig(r=lora_rank, target_modules=["q_proj", "v_proj"]))
        self.policy, self.processor, self.reward = policy, processor, reward
        self.ref = copy.deepcopy(policy).eval().requires_grad_(False)
        self.policy.train()
        self.G, self.beta, self.clip, self.lr = group_size, beta, clip, lr
        self.max_new_tokens, self.temperature, self.world = max_new_tokens, temperature, world
        tok = processor.tokenizer
        self.eos = tok.convert_tokens_to_ids("<|im_end|>")
        self.suppress = suppressed_ids(tok)

    @torch.no_grad()
    def sample(self, images: list) -> tuple[list[str], dict[str, torch.Tensor], torch.Tensor]:
        """G sampled captions per image (image-major), their teacher-forcing inputs and response mask."""
        enc = self.processor(
            text=[caption_prompt(self.processor)] * len(images),
            images=images,
            return_tensors="pt",
            padding=True,
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.policy.generate(
            **enc,
            do_sample=True,
            temperature=self.temperature,
            num_return_sequences=self.G,
            max_new_tokens=self.max_new_tokens,
            suppress_tokens=self.suppress,
            eos_token_id=self.eos,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        n_prompt = enc["input_ids"].shape[1]
        resp = out[:, n_prompt:]
        texts = decode_captions(self.processor.tokenizer, resp)
        # response tokens up to and including the first <|im_end|>
        is_eos = resp == self.eos
        first = torch.where(
            is_eos.any(1),
            is_eos.float().argmax(1),
            torch.full_like(is_eos[:, 0], resp.shape[1] - 1, dtype=torch.long),
        )
        mask = torch.arange(resp.shape[1], device=resp.device)[None] <= first[:, None]
        rep = {k: v.repeat_interleave(self.G, 0) if k != "pixel_values" else v for k, v in enc.items()}
        inputs = dict(rep)  # image_grid_thw repeated per sample above; the patches below
        inputs["pixel_values"] = self._repeat_pixels(enc)
        inputs["input_ids"] = out
        inputs["attention_mask"] = torch.cat([rep["attention_mask"], mask.long()], 1)
        if "mm_token_type_ids" in rep:
            inputs["mm_token_type_ids"] = torch.cat([rep["mm_token_type_ids"], torch.zeros_like(resp)], 1)
        return texts, inputs, mask

    def _repeat_pixels(self, enc: dict) -> torch.Tensor:
        """pixel_values are concatenated patches of all images: repeat each image's block G times, image-major."""
        per = enc["image_grid_thw"].prod(-1).tolist()
        blocks = torch.split(enc["pixel_values"], per)
        return torch.cat([b for b in blocks for _ in range(self.G)])

    def token_logps(self, model: Any, inputs: dict, n_resp: int) -> torch.Tensor:
        """log p of each response token under `model` (teacher-forced): [N, n_resp]."""
        logits = model(**inputs).logits[:, -n_resp - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, -n_resp:, None]).squeeze(-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["images"]
        texts, inputs, mask = self.sample(images)
        n_resp = mask.shape[1]
        meter = VisualAttentionMeter()
        image_mask = inputs["input_ids"] == self.policy.config.image_token_id
        with meter.measure(self.policy, image_mask, rows=n_resp + 1):
            logp = self.token_logps(self.policy, inputs, n_resp)
        share = meter.share()[:, :-1].to(self.device)
        att = (share * mask).sum(1) / mask.sum(1).clamp_min(1)
        with torch.no_grad():
            ref_logp = self.token_logps(self.ref, inputs, n_resp)
        rep_images = [im for im in images for _ in range(self.G)]
        rep_scenes = [s for s in batch["scenes"] for _ in range(self.G)] if "scenes" in batch else None
        terms = self.reward(rep_images, texts, mask.sum(1).cpu(), att.cpu(), rep_scenes)
        adv = group_advantages(terms["reward"].view(-1, self.G)).flatten().to(self.device)
        per_tok = clipped_surrogate(logp, logp.detach(), adv[:, None], self.clip) + self.beta * kl_k3(
            logp, ref_logp
        )
        loss = (per_tok * mask).sum() / mask.sum()
        log = {f"grpo/{k}": v.float().mean() for k, v in terms.items()}
        log["grpo/kl"] = (kl_k3(logp.detach(), ref_logp) * mask).sum() / mask.sum()
        log["grpo/attention_share"] = att.mean()
        log["grpo/tokens"] = mask.sum(1).float().mean()
        if self.world is not None and "scenes" in batch:
            scenes = [s for s in batch["scenes"] for _ in range(self.G)]
            true = [
                (c := parse_claim(t)) is not None and holds(c, s, self.world.relation_margin)
                for t, s in zip(texts, scenes)
            ]
            log["grpo/truth_rate"] = torch.tensor(100.0 * sum(true) / len(true))
        self.log_dict(log, batch_size=len(texts))
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # PIL images and scene graphs; the processor's tensors are moved in `sample`

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=self.lr)


def image_batches(images: list, scenes: list, batch_size: int, seed: int = 0) -> Callable:
    """An infinite iterable of {"images", "scenes"} mini-batches for `Trainer.fit(max_steps=...)`."""

    class _It(torch.utils.data.IterableDataset):
        def __iter__(self):
            rng = random.Random(seed)
            while True:
                idx = rng.sample(range(len(images)), batch_size)
                yield {"images": [images[i] for i in idx], "scenes": [scenes[i] for i in idx]}

    return torch.utils.data.DataLoader(_It(), batch_size=None, collate_fn=lambda x: x)
