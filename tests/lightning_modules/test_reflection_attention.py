"""Visual-attention measures (lightning_modules/reflection/attention.py) on a tiny random Qwen2.5-VL."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lightning_modules.reflection.attention import (
    VisualAttentionMeter,
    hellinger,
    late_early_ratio,
    measure_response,
    share_from_attentions,
)


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vlm_dir).eval()
    return model, AutoProcessor.from_pretrained(tiny_vlm_dir)


def _inputs(processor, image):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}],
        add_generation_prompt=True,
    )
    return processor(text=[text + "a red circle left of a blue square"], images=[image], return_tensors="pt")


@pytest.mark.parametrize("layers, sink", [(None, 1), ([1], 0), ([0], 3)])
def test_meter_equals_eager_output_attentions_and_leaves_the_forward_unchanged(vlm, layers, sink):
    model, processor = vlm
    inputs = _inputs(processor, Image.new("RGB", (56, 56), "red"))
    mask = inputs["input_ids"] == model.config.image_token_id
    assert mask.sum() > 0
    meter = VisualAttentionMeter(layers=layers, sink_tokens=sink)
    with meter.measure(model, mask, rows=7):
        logits = model(**inputs).logits
    assert model.config.text_config._attn_implementation != "visual_share"  # restored
    model.set_attn_implementation("eager")
    try:
        ref_out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    ref = share_from_attentions(ref_out.attentions, mask, rows=7, sink_tokens=sink, layers=layers)
    torch.testing.assert_close(meter.share(), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, ref_out.logits, atol=1e-4, rtol=1e-4)
    assert set(meter.per_layer) == ({0, 1} if layers is None else set(layers))
    assert ((meter.share() >= 0) & (meter.share() <= 1 + 1e-6)).all()


def test_hellinger_and_late_early_ratio():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(hellinger(p, p), torch.zeros(2), atol=1e-6)
    assert torch.allclose(hellinger(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])), torch.tensor(1.0))
    share = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.4, 0.4]])
    assert late_early_ratio(share).item() == pytest.approx(4.0)


def test_measure_response_reports_share_ratio_and_visual_dependency(vlm):
    model, processor = vlm
    res = measure_response(
        model,
        processor,
        Image.new("RGB", (56, 56), "blue"),
        "describe this image",
        "a red circle left of a blue square",
    )
    n = len(processor.tokenizer("a red circle left of a blue square", add_special_tokens=False).input_ids)
    assert res["share"].shape == (n,) and res["dependency"].shape == (n,)
    assert 0 < res["share_mean"] < 1 and res["ratio"] > 0
    assert 0 < res["dependency_mean"] <= 1  # the image changes the random model's predictions
    with pytest.raises(ValueError, match="empty response"):
        measure_response(model, processor, Image.new("RGB", (56, 56), "blue"), "describe", "")
