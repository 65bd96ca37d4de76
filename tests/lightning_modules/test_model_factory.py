import pytest
import torch
from safetensors.torch import save_file

from lightning_modules.model_factory import ModelSpec


@pytest.mark.parametrize("name,dim", [("tiny-vit", 128), ("tiny-rn", 128), ("small-vit", 256)])
def test_tiny_models_build_offline_and_encode(name, dim):
    spec = ModelSpec(name=name)
    model = spec.build().eval()
    x = torch.randn(2, 3, spec.image_size, spec.image_size)
    t = spec.tokenizer()(["a red circle", "two blue squares"])
    with torch.no_grad():
        img, txt = model.encode_image(x), model.encode_text(t)
    assert img.shape == txt.shape == (2, dim)
    assert spec.image_transform()  # open_clip preprocessing at the model's size


def test_pretrained_local_file_roundtrip(tmp_path):
    src = ModelSpec(name="tiny-vit").build()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    loaded = ModelSpec(name="tiny-vit", pretrained=str(path)).build()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_quick_gelu_handling():
    assert ModelSpec(name="ViT-B-32", pretrained=None).force_quick_gelu is False
    assert ModelSpec(name="ViT-B-32-quickgelu").force_quick_gelu is True
    assert ModelSpec(name="ViT-B-32", pretrained="openai").force_quick_gelu is True
    assert ModelSpec(name="tiny-vit", quick_gelu=True).force_quick_gelu is True
    m = ModelSpec(name="tiny-vit", quick_gelu=True).build()
    assert "QuickGELU" in str(m.visual)


def test_bad_model_config_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip architecture 'vit-nope'.*tiny-vit"):
        ModelSpec(name="vit-nope")
    with pytest.raises(FileNotFoundError, match="model.pretrained: weights file not found"):
        ModelSpec(name="tiny-vit", pretrained=str(tmp_path / "missing.pt")).build()
