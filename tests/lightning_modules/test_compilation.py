"""torch.compile for training (`module.compile`): in place, one graph for every training batch shape, eager
evaluation, and a compiled run that trains like the eager one and whose checkpoint evaluates."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch._dynamo.utils import counters

from lightning_modules.clip_module import ClipModule
from lightning_modules.compilation import CompileSpec, compiled_modules
from lightning_modules.losses.base import LossSum
from lightning_modules.losses.contrastive import ContrastiveLoss
from lightning_modules.model_factory import ModelSpec
from tests.helpers import evaluate_like_the_run, train_eager_and_compiled, train_series
from train import train


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"scope": "layers"}, "module.compile.scope"),
        ({"mode": "fast"}, "module.compile.mode"),
        ({"dynamic": "yes"}, "module.compile.dynamic"),
    ],
)
def test_bad_compile_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        CompileSpec(enabled=True, **kwargs)


def test_compiles_in_place_once_with_the_same_state_dict_keys():
    model = ModelSpec(name="tiny-vit").build()
    keys = list(model.state_dict())
    assert CompileSpec(enabled=False).apply(model) == 0 and compiled_modules(model) == []
    spec = CompileSpec(enabled=True, scope="model", backend="eager")
    assert spec.apply(model) == 1 and compiled_modules(model) == [""]
    assert spec.apply(model) == 0  # fitting again does not compile again
    assert list(model.state_dict()) == keys

    blocks = ModelSpec(name="tiny-vit").build()
    n_blocks = sum(type(m).__name__ == "ResidualAttentionBlock" for m in blocks.modules())
    assert CompileSpec(enabled=True, scope="blocks", backend="eager").apply(blocks) == n_blocks > 0
    assert all(".resblocks." in name for name in compiled_modules(blocks))
    assert list(blocks.state_dict()) == keys
    with pytest.raises(ValueError, match="module.compile.scope=blocks: no module of"):
        CompileSpec(enabled=True, scope="blocks", blocks=("NoSuchBlock",)).apply(ModelSpec().build())


def test_auto_scope_compiles_blocks_only_when_sharded(monkeypatch):
    import lightning_modules.compilation as compilation

    model = ModelSpec(name="tiny-vit").build()
    assert CompileSpec(enabled=True).resolve_scope(model) == "model"
    monkeypatch.setattr(compilation, "is_sharded", lambda m: True)
    assert CompileSpec(enabled=True).resolve_scope(model) == "blocks"


def _module(**compile_kwargs) -> ClipModule:
    torch.manual_seed(0)
    return ClipModule(
        ModelSpec(name="tiny-vit"),
        LossSum({"contrastive": ContrastiveLoss()}),
        partial(torch.optim.AdamW, lr=1e-3),
        compile={"enabled": True, "backend": "eager", **compile_kwargs},
    )


SHAPES = [(6, 9, 12), (8, 13, 20), (5, 7, 16)]  # (images, captions, token columns) of three training batches


def _encode_batches(module: ClipModule, shapes=SHAPES) -> None:
    for n_img, n_txt, cols in shapes:
        images = torch.randint(0, 256, (n_img, 3, 48, 48), dtype=torch.uint8)
        texts = torch.randint(1, 400, (n_txt, cols))
        img, txt, _ = module.encode(module.normalize_images(images), texts, counts_vary=n_img != n_txt)
        assert img.shape[0] == n_img and txt.shape[0] == n_txt


def test_one_graph_serves_every_training_batch_shape_and_evaluation_runs_eager():
    module = _module()
    module.compile_spec.apply(module.model)
    module.train()
    _encode_batches(module)
    assert counters["stats"]["unique_graphs"] == 1  # image count, caption count, columns: marked dynamic
    module.eval()
    with torch.no_grad():
        _encode_batches(module)
    assert counters["stats"]["unique_graphs"] == 1  # validation / test: the eager forward, no new graph


def test_plain_batches_keep_static_counts_and_a_count_change_recompiles_once():
    """Without hard negatives only the token columns are marked dynamic (static counts make faster kernels); were
    the count to change anyway, torch's automatic dynamic shapes recompile once."""
    module = _module()
    module.compile_spec.apply(module.model)
    module.train()
    _encode_batches(module, [(8, 8, 12), (8, 8, 20), (8, 8, 16)])
    assert counters["stats"]["unique_graphs"] == 1
    _encode_batches(module, [(6, 6, 12), (5, 5, 24)])
    assert counters["stats"]["unique_graphs"] == 2


def test_a_batch_filling_the_context_shares_the_graph():
    """The trimmed text tower takes the full context (32 columns for the tiny CLIP) through the same code as shorter
    rows, so a batch that needs every position does not branch into open_clip's forward and a second graph."""
    module = _module()
    module.compile_spec.apply(module.model)
    module.train()
    _encode_batches(module, [(6, 9, 16), (8, 13, 32), (5, 7, 24)])
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_runs_load_token_columns_in_multiples_of_8(cfg_factory):
    """On CUDA, inductor guards on a symbolic column count being a multiple of 8 (H200, torch 2.11: a compiled run
    recompiled at its first 12- or 20-column batch), so a compiled run's loader keeps multiples of 8; an eager run
    keeps the model's 4 (fewer padded columns)."""
    from lightning_modules.training import build_datamodule

    spec = ModelSpec(name="tiny-vit")
    assert CompileSpec().columns_multiple(4) == 4 and CompileSpec(enabled=True).columns_multiple(None) is None
    assert (
        CompileSpec(enabled=True).columns_multiple(4) == 8
        and CompileSpec(enabled=True).columns_multiple(3) == 24
    )
    widths = {}
    for enabled in (False, True):
        cfg = cfg_factory("negatives=[text_rules]", "data.num_workers=0", f"module.compile.enabled={enabled}")
        dm = build_datamodule(cfg, spec)
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        widths[enabled] = {next(loader).texts_YL.shape[1] for _ in range(4)}
    assert dm.text_trim_multiple == 8 and all(w % 8 == 0 for w in widths[True]), widths
    assert any(w % 8 for w in widths[False]), f"eager batches keep multiples of 4: {widths}"


def test_static_shapes_compile_a_graph_per_shape():
    """The counter above can fail: with dynamic=false every new shape is a new graph."""
    module = _module(dynamic=False)
    module.compile_spec.apply(module.model)
    module.train()
    _encode_batches(module)
    assert counters["stats"]["unique_graphs"] == len(SHAPES)


def test_inductor_compiled_run_trains_like_eager_and_its_checkpoint_evaluates(cfg_factory, tmp_path):
    """A real inductor compile (C++ kernels on the CPU) of a hard-negative run: every step's loss equal to the eager
    run's (fp32; measured max relative difference ~1e-7), and evaluate.py on the compiled run's checkpoint gives
    the scores the run printed."""
    common = (
        "experiment=hardneg",
        "trainer.max_steps=6",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=3",
    )
    (eager, eager_dir), (compiled, compiled_dir) = train_eager_and_compiled(
        cfg_factory, tmp_path, *common
    ).values()
    # the compiled run: one training graph (test and evaluation run eager)
    assert counters["stats"]["unique_graphs"] == 1
    eager_losses = train_series(eager_dir, "train/loss")["train/loss"]
    compiled_losses = train_series(compiled_dir, "train/loss")["train/loss"]
    assert len(compiled_losses) == len(eager_losses) == 6
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled["val/r_mean"] == pytest.approx(eager["val/r_mean"], abs=1e-6)
    ckpt = compiled_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in state["state_dict"])
    results, trained = evaluate_like_the_run(cfg_factory, ckpt, compiled, tmp_path / "evaluation")
    assert trained and results == pytest.approx(trained, abs=1e-9)


def test_compiled_gradient_surgery_takes_the_eager_gradients_after_a_compiled_run(cfg_factory, tmp_path):
    """Gradient surgery runs two backward passes through one forward. A compiled run first (donated buffers on: it
    leaves the backward of the same graph in inductor's cache and in dynamo's memory), then pcgrad eager and
    compiled: the compiled run's per-group gradients (cosine, second group's norm) and losses equal the eager
    ones. Served the cached donating backward, the second group's gradient came out wrong (torch 2.14: grad_cos
    -0.021 instead of 0.155 at step 0; `benchmarks/compile_retain_graph.py`)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    before = (functorch_config.donated_buffer, inductor_config.fx_graph_cache)
    warm = cfg_factory(
        "experiment=hardneg",
        "trainer.max_steps=2",
        "run_test=false",
        "evaluate_after=false",
        "module.compile.enabled=true",
    )
    warm.paths.output_dir = str(tmp_path / "warm")
    train(warm)
    common = (
        "experiment=hardneg_pcgrad",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "run_test=false",
        "evaluate_after=false",
    )
    keys = ("train/loss", "train/grad_cos", "train/grad_norm_b")
    runs = train_eager_and_compiled(cfg_factory, tmp_path, *common)
    stats = {name: train_series(run_dir, *keys) for name, (_, run_dir) in runs.items()}
    for key, eager in stats["eager"].items():
        assert len(eager) == 4 and stats["compiled"][key] == pytest.approx(eager, rel=1e-4, abs=1e-5), key
    # the process-wide settings are back once fitting ended
    assert (functorch_config.donated_buffer, inductor_config.fx_graph_cache) == before
