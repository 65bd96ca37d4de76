"""GPU checks (`make test-gpu`): bf16 training on CUDA end to end, and CUDA inference equal to CPU inference."""

from __future__ import annotations

import math

import torch

from lightning_modules.inference import ClipScorer, load_checkpoint
from lightning_modules.model_factory import ModelSpec
from tests.helpers import run_if


@run_if(min_cuda_gpus=1)
def test_bf16_training_on_gpu_saves_a_checkpoint_that_loads_on_cpu(cfg_factory, tmp_path):
    from train import train

    cfg = cfg_factory(
        "trainer=gpu",
        "experiment=hardneg",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "eval_device=cuda",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/rel_text_count"] > 0
    assert "eval/synthetic/mean/acc" in metrics
    model, spec, _ = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert next(model.parameters()).device.type == "cpu"


@run_if(min_cuda_gpus=1)
def test_cuda_scorer_matches_cpu_scorer():
    from PIL import Image

    spec = ModelSpec(name="tiny-vit")
    model = spec.build().eval()
    images = [Image.new("RGB", (48, 48), c) for c in ("red", "green", "blue")]
    texts = ["a red circle", "two green squares", "a blue star left of a cube"]
    cpu = ClipScorer(model, spec.image_transform(), spec.tokenizer())
    img_cpu, txt_cpu = cpu.encode_images(images), cpu.encode_texts(texts)
    gpu = ClipScorer(model.cuda(), spec.image_transform(), spec.tokenizer(), device="cuda")
    torch.testing.assert_close(gpu.encode_images(images), img_cpu, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gpu.encode_texts(texts), txt_cpu, atol=1e-4, rtol=1e-3)
