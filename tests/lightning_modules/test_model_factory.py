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
    # a batch that fills the context: the same features (through the trimmed path: one compiled graph for all)
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


def test_pre_trimmed_tokens_need_no_length_on_the_device():
    """The loader drops padding columns on the host; on an accelerator the tower then runs over the given columns
    with no data-dependent op (the 'meta' device fails on one), on the CPU with the same features as the full
    tower."""
    from datamodules.dataset import trim_padding

    model = ModelSpec(name="tiny-vit").build().eval()
    full = ModelSpec(name="tiny-vit", trim_text=False).build().eval()
    full.load_state_dict(model.state_dict())
    text = ModelSpec(name="tiny-vit").tokenizer()(["a red cube left of a blue ball", "two small green balls"])
    short = trim_padding(text, 4)
    assert short.shape == (2, 12) and torch.equal(short, text[:, :12]) and short.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(short), full.encode_text(text), atol=1e-5, rtol=1e-5)
    meta = model.to("meta")
    assert meta.encode_text(torch.zeros(4, 12, dtype=torch.long, device="meta")).shape == (4, 128)


def test_trim_padding_keeps_every_used_column_in_multiples():
    from datamodules.dataset import trim_padding

    t = torch.zeros(3, 32, dtype=torch.long)
    t[0, :5] = 7
    t[2, 9] = 1  # the last used column is 9 -> 10 columns, rounded up to 12
    assert trim_padding(t, 4).shape == (3, 12) and torch.equal(trim_padding(t, 4), t[:, :12])
    assert trim_padding(t, 8).shape == (3, 16)
    t[1, 31] = 3  # a row that fills the context: nothing to drop, the same tensor back
    assert trim_padding(t, 4) is t
    assert trim_padding(torch.zeros(2, 32, dtype=torch.long), 4).shape == (2, 32)  # all padding: untouched


@pytest.mark.parametrize(
    "name,kwargs,trims",
    [
        ("tiny-vit", {}, True),
        ("tiny-rn", {}, True),
        ("tiny-vit", {"trim_text": False}, False),
        ("ViT-B-32", {}, True),
        ("coca_ViT-B-32", {}, False),  # CoCa: not open_clip's CLIP class
        ("ViT-B-16-SigLIP", {}, False),  # CustomTextCLIP, last-token pooling
        ("roberta-ViT-B-32", {}, False),  # Hugging Face text tower: decided without building (no hub)
    ],
)
def test_text_trim_multiple_says_what_build_makes_without_building(name, kwargs, trims):
    from lightning_modules.model_factory import TrimmedTextCLIP

    spec = ModelSpec(name=name, **kwargs)
    torch.manual_seed(0)
    expected_next = torch.rand(2)
    torch.manual_seed(0)
    multiple = spec.text_trim_multiple
    assert torch.equal(torch.rand(2), expected_next), (
        "the meta-device build must not draw from the global RNG"
    )
    assert multiple == (TrimmedTextCLIP.MULTIPLE if trims else None)
    if name.startswith("tiny"):  # the real build agrees
        assert isinstance(spec.build(), TrimmedTextCLIP) is trims


def test_clip_scorer_hands_the_model_trimmed_tokens_with_the_full_towers_features():
    from lightning_modules.inference import ClipScorer

    spec = ModelSpec(name="tiny-vit")
    model = spec.build().eval()
    full = ModelSpec(name="tiny-vit", trim_text=False).build().eval()
    full.load_state_dict(model.state_dict())
    seen = []
    encode = model.encode_text
    model.encode_text = lambda t, **kw: seen.append(t.shape[1]) or encode(t, **kw)
    caps = ["a red cube left of a blue ball", "two small green balls", "a cube"]
    ours = ClipScorer(model, spec.image_transform(), spec.tokenizer(), batch_size=2).encode_texts(caps)
    ref = ClipScorer(full, spec.image_transform(), spec.tokenizer(), batch_size=2).encode_texts(caps)
    assert seen == [12, 4]  # trimmed before the transfer, per batch
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
