import open_clip
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


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_trimmed_text_tower_gives_the_full_towers_features_and_gradients(name):
    from datamodules.sources.synthetic import SyntheticWorldSource
    from datamodules.world import World
    from lightning_modules.model_factory import TrimmedTextCLIP

    torch.manual_seed(0)
    trimmed = ModelSpec(name=name).build()
    torch.manual_seed(0)
    full = ModelSpec(name=name, trim_text=False).build()
    assert type(trimmed) is TrimmedTextCLIP and type(full) is open_clip.CLIP
    assert trimmed.state_dict().keys() == full.state_dict().keys()
    tok = ModelSpec(name=name).tokenizer()
    caps = [
        r.caption
        for r in SyntheticWorldSource(world=World(seed=0), num_train=48, num_val=0, num_test=0).records(
            "train"
        )
    ]
    caps[3] = "a red cube ! left of a blue ball"  # '!' is token 0, the padding id, inside a caption
    text = tok(caps)
    used = int((text != 0).any(0).nonzero().max()) + 1
    assert used < 29, "the batch should leave columns to trim"
    a, b = trimmed.encode_text(text), full.encode_text(text)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.pow(2).sum().backward()
    b.pow(2).sum().backward()
    for (n, p), (_, q) in zip(trimmed.named_parameters(), full.named_parameters()):
        if q.grad is not None:
            torch.testing.assert_close(
                p.grad, q.grad, atol=1e-5 * float(q.grad.abs().max()) + 1e-9, rtol=0, msg=n
            )
    # a batch that fills the context goes through open_clip's own path
    long = tok([" ".join(["red"] * 40)] * 2)
    torch.testing.assert_close(trimmed.encode_text(long), full.encode_text(long))


def test_trimmed_text_tower_computes_no_length_off_the_cpu():
    """Off the CPU the trim length would be a host sync per step; the 'meta' device stands in for an accelerator:
    it fails on any data-dependent op (nonzero), so this passes only if the tower skips the length there."""
    model = ModelSpec(name="tiny-vit").build().to("meta")
    with pytest.raises(NotImplementedError):
        torch.zeros(2, 32, dtype=torch.long, device="meta").nonzero()
    out = model.encode_text(torch.zeros(4, 32, dtype=torch.long, device="meta"))
    assert out.shape == (4, 128)
