"""Shared by the diffusers image editor (hard negatives) and the diffusers text-to-image stage (preprocessing)."""

from __future__ import annotations

import inspect

import torch


def device_dtype(device: str, dtype: str, cuda_dtype: torch.dtype = torch.float16) -> tuple[str, torch.dtype]:
    """`auto` device = cuda when available; `auto` dtype = `cuda_dtype` on cuda, float32 on cpu."""
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dt = (
        (cuda_dtype if dev.startswith("cuda") else torch.float32)
        if dtype == "auto"
        else getattr(torch, dtype)
    )
    return dev, dt


def check_pipeline_class(name: str, key: str) -> None:
    import diffusers

    if not hasattr(diffusers, name):
        raise ValueError(f"{key}: diffusers has no pipeline class '{name}'")


def load_pipeline(name: str, model: str, revision: str | None, device: str, dtype: torch.dtype):
    """A diffusers pipeline by class name from a hub id or local folder, without safety checker, progress bar off."""
    import diffusers

    cls = getattr(diffusers, name)
    kw = {"revision": revision} if revision else {}
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        kw |= {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(model, dtype=dtype, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def accepted_kwargs(pipe) -> set[str]:
    return set(inspect.signature(pipe.__call__).parameters)
