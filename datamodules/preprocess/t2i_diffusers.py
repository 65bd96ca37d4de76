"""The text-to-image backend through a diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline,
FluxPipeline, … by class name), with a model id or a local folder.

    DiffusersT2I(pipeline="StableDiffusionPipeline", model="/models/sd-1.5", steps=25, guidance_scale=7.5,
                 size=512, seed=0)

Batched: one pipeline call per batch, one torch.Generator per item seeded from (seed, item), so an item's image
does not depend on its batch. Keyword arguments are passed only if the pipeline's `__call__` accepts them.
"""

from __future__ import annotations

from typing import Any

import torch

from datamodules.cache import model_fingerprint
from datamodules.diffusers_util import accepted_kwargs, check_pipeline_class, device_dtype, load_pipeline


class DiffusersT2I:
    """Args:
    pipeline: diffusers pipeline class name. model: hub id or local folder. revision: part of the cache key.
    prompt: template with {caption}. negative_prompt: optional.
    steps / guidance_scale: sampling. size: height = width. seed: base seed.
    device / dtype: auto = cuda + float16 when available, else cpu + float32.
    """

    cacheable = True

    def __init__(
        self,
        pipeline: str = "StableDiffusionPipeline",
        model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        *,
        revision: str | None = None,
        prompt: str = "{caption}",
        negative_prompt: str | None = None,
        steps: int = 25,
        guidance_scale: float = 7.5,
        size: int = 512,
        seed: int = 0,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        check_pipeline_class(pipeline, "text_to_image.pipeline")
        if "{caption}" not in prompt:
            raise ValueError("text_to_image prompt must contain '{caption}'")
        self.pipeline_name, self.model, self.revision = pipeline, model, revision
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.params = {"num_inference_steps": steps, "guidance_scale": guidance_scale}
        self.size, self.seed = size, seed
        self.device, self.dtype = device_dtype(device, dtype)
        self._pipe = None

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "diffusers_t2i",
            "pipeline": self.pipeline_name,
            **model_fingerprint(self.model, self.revision),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "size": self.size,
            "seed": self.seed,
            **self.params,
        }

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.pipeline_name, self.model, self.revision, self.device, self.dtype)
        return self._pipe

    @torch.no_grad()
    def generate(self, captions: list[str], seeds: list[int]) -> list:
        pipe = self.pipe
        accepted = accepted_kwargs(pipe)
        kw: dict[str, Any] = {k: v for k, v in self.params.items() if k in accepted}
        kw["prompt"] = [self.prompt.format(caption=c) for c in captions]
        if self.negative_prompt and "negative_prompt" in accepted:
            kw["negative_prompt"] = [self.negative_prompt] * len(captions)
        for k in ("height", "width"):
            if k in accepted:
                kw[k] = self.size
        kw["generator"] = [
            torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + s) for s in seeds
        ]
        images = pipe(**kw).images
        return [im.convert("RGB") for im in images]
