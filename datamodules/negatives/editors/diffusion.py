"""Diffusers editor: any image-editing pipeline class by name (InstructPix2Pix, img2img, inpainting, or a newer
editing pipeline), with a model id or a local path. Loaded lazily on first use (in whichever process edits).

    DiffusersEditor(pipeline="StableDiffusionInstructPix2PixPipeline", model="/models/instruct-pix2pix",
                    prompt="make it {target}", steps=20, guidance_scale=7.5, image_guidance_scale=1.5)

Keyword arguments are passed only if the pipeline's `__call__` accepts them; inpainting pipelines get a full mask.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from PIL import Image

from datamodules.cache import model_fingerprint
from datamodules.diffusers_util import accepted_kwargs, check_pipeline_class, device_dtype, load_pipeline
from datamodules.negatives.editors.base import ImageEditor
from datamodules.records import Record


class DiffusersEditor(ImageEditor):
    """Args:
    pipeline: a diffusers pipeline class name.
    model: hub id or local folder (`save_pretrained` layout).
    revision: model revision (part of the cache key).
    prompt: template with {target} (the negative caption) and {source} (the original caption).
    steps / guidance_scale / image_guidance_scale / strength: sampling parameters (passed when accepted).
    size: edit resolution (the output is resized back to the input size).
    seed: sampling seed (the generator is re-seeded per edit, so an edit is reproducible).
    device / dtype: where and how the pipeline runs (auto = cuda if available).
    """

    expensive = True

    def __init__(
        self,
        pipeline: str = "StableDiffusionInstructPix2PixPipeline",
        model: str = "timbrooks/instruct-pix2pix",
        *,
        revision: str | None = None,
        prompt: str = "{target}",
        steps: int = 20,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        strength: float = 0.75,
        size: int = 512,
        seed: int = 0,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        check_pipeline_class(pipeline, "editor.pipeline")
        self.pipeline_name, self.model, self.revision = pipeline, model, revision
        self.prompt = prompt
        self.params = {
            "num_inference_steps": steps,
            "guidance_scale": guidance_scale,
            "image_guidance_scale": image_guidance_scale,
            "strength": strength,
        }
        self.size, self.seed = size, seed
        self.device, self.dtype = device_dtype(device, dtype)
        self._pipe = None

    def identity(self) -> dict[str, Any]:
        return {
            "editor": "diffusers",
            "pipeline": self.pipeline_name,
            **model_fingerprint(self.model, self.revision),
            "prompt": self.prompt,
            "size": self.size,
            "seed": self.seed,
            "dtype": str(self.dtype),
            **self.params,
        }

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.pipeline_name, self.model, self.revision, self.device, self.dtype)
        return self._pipe

    def edit(
        self, image: Image.Image, record: Record, source_caption: str, target_caption: str, rng: random.Random
    ):
        pipe = self.pipe
        accepted = accepted_kwargs(pipe)
        src = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        kwargs: dict[str, Any] = {k: v for k, v in self.params.items() if k in accepted}
        kwargs["prompt"] = self.prompt.format(target=target_caption, source=source_caption)
        kwargs["image"] = src
        if "mask_image" in accepted:
            kwargs["mask_image"] = Image.new("L", src.size, 255)
        for k in ("height", "width"):
            if k in accepted:
                kwargs[k] = self.size
        kwargs["generator"] = torch.Generator(device="cpu").manual_seed(self.seed)
        out = pipe(**kwargs).images[0]
        return out.convert("RGB").resize(image.size, Image.Resampling.BICUBIC)
