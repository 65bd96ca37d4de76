"""GPU checks (`make test-gpu`): bf16 training on CUDA end to end, and CUDA inference equal to CPU inference."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from lightning_modules.inference import ClipScorer, load_checkpoint
from lightning_modules.model_factory import ModelSpec
from tests.helpers import evaluate_like_the_run, run_if, train_eager_and_compiled, train_series


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
def test_hardneg_training_steps_do_not_synchronise_outside_logging_steps(cfg_factory, tmp_path):
    """A host synchronisation inside a step stops the CPU from running ahead: the GPU then idles while the next
    batch is fetched (data wait, framework overhead). SyncAudit lists every one torch knows of; outside logging
    steps there must be none, with the default hard negatives (kind selection, per-sample terms, diagnostics)."""
    from train import train

    out = tmp_path / "syncs.json"
    cfg = cfg_factory(
        "trainer=gpu",
        "experiment=hardneg",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=5",
        "trainer.val_check_interval=100000",
        "+trainer.limit_val_batches=0",
        "run_test=false",
        "evaluate_after=false",
        "+callbacks.sync_audit._target_=lightning_modules.sync_audit.SyncAudit",
        "+callbacks.sync_audit.start=2",
        "+callbacks.sync_audit.steps=8",
        f"+callbacks.sync_audit.out={out}",
    )
    train(cfg)
    rep = json.loads(out.read_text())
    assert rep["steps"] == 8 and rep["logging_step_indices"], rep
    assert rep["syncs_per_non_logging_step"] == 0, json.dumps(rep, indent=1)


@run_if(min_cuda_gpus=1)
def test_compiled_bf16_training_matches_eager_without_host_syncs(cfg_factory, tmp_path):
    """module.compile (inductor, Triton kernels) under bf16 with hard negatives: one training graph for every batch
    shape, each step's loss within bf16 tolerance of the eager run's, and no host synchronisation outside logging
    steps (a compiled region must not add one)."""
    from torch._dynamo.utils import counters

    from train import train

    common = (
        "trainer=gpu",
        "experiment=hardneg",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=100000",
        "+trainer.limit_val_batches=0",
        "run_test=false",
        "evaluate_after=false",
    )
    torch._dynamo.reset()
    counters.clear()
    runs = train_eager_and_compiled(cfg_factory, tmp_path, *common)
    losses = {name: train_series(run_dir, "train/loss")["train/loss"] for name, (_, run_dir) in runs.items()}
    assert counters["stats"]["unique_graphs"] == 1  # the compiled run's (the eager run compiles nothing)
    assert len(losses["compiled"]) == len(losses["eager"]) == 12
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=3e-2)
    # the compiled run again, audited: log every 5 steps, syncs counted over steps 2-9
    out = tmp_path / "syncs.json"
    audit = [
        "module.compile.enabled=true",
        "trainer.log_every_n_steps=5",
        "+callbacks.sync_audit._target_=lightning_modules.sync_audit.SyncAudit",
        "+callbacks.sync_audit.start=2",
        "+callbacks.sync_audit.steps=8",
        f"+callbacks.sync_audit.out={out}",
    ]
    cfg = cfg_factory(*common, *audit)
    cfg.paths.output_dir = str(tmp_path / "audit")
    train(cfg)
    rep = json.loads(out.read_text())
    assert rep["steps"] == 8 and rep["syncs_per_non_logging_step"] == 0, json.dumps(rep, indent=1)


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
    # the GPU scorer hands the model host-trimmed tokens: same features as open_clip's full-length tower on the GPU
    full = ModelSpec(name="tiny-vit", trim_text=False).build().eval()
    full.load_state_dict(model.state_dict())
    untrimmed = ClipScorer(full.cuda(), spec.image_transform(), spec.tokenizer(), device="cuda")
    torch.testing.assert_close(gpu.encode_texts(texts), untrimmed.encode_texts(texts), atol=1e-4, rtol=1e-3)


@run_if(min_cuda_gpus=1)
def test_fsdp_bf16_training_checkpoint_and_evaluate_on_gpu(cfg_factory, tmp_path):
    """strategy=fsdp (FSDP2) on one GPU, bf16: trains, last.ckpt holds a full state dict that loads on the CPU, and
    evaluate.py on it reproduces the scores the run printed."""
    from train import train

    cfg = cfg_factory(
        "trainer=gpu",
        "strategy=fsdp",
        "experiment=hardneg",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "eval_device=cuda",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/rel_text_count"] > 0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state["model.logit_scale"].shape == (1,) and all(type(v) is torch.Tensor for v in state.values())
    model, _, _ = load_checkpoint(ckpt)
    assert next(model.parameters()).device.type == "cpu"
    results, trained = evaluate_like_the_run(
        cfg_factory, ckpt, metrics, tmp_path / "evaluation", "device=cuda"
    )
    assert set(trained) == set(results)
    for k, v in results.items():
        assert v == pytest.approx(trained[k], abs=1e-6), k


@run_if(min_cuda_gpus=1)
@pytest.mark.parametrize("bf16", [False, True])
def test_fsdp_loss_and_gradients_match_single_device_on_gpu(bf16, tmp_path):
    """FSDP2 (NCCL, one rank) vs the plain module on the same batch and GPU: fp32 exact to 1e-5; bf16 (sharded
    compute in bf16 vs autocast) within bf16 tolerance."""
    from tests.lightning_modules.test_parallel import loss_and_grads, make_batch, make_module, run_distributed

    ref_loss, ref_grads = loss_and_grads(
        make_module(), make_batch(list(range(8))), device="cuda", autocast_bf16=bf16
    )
    loss, grads = run_distributed(
        "fsdp", world=1, out=tmp_path / "g.pt", backend="nccl", device="cuda", bf16=bf16
    )
    tol = dict(atol=2e-2, rtol=5e-2) if bf16 else dict(atol=1e-5, rtol=1e-4)
    assert loss == pytest.approx(ref_loss.item(), abs=tol["atol"] * 5 if bf16 else 1e-5)
    flat = torch.cat([g.flatten() for g in grads.values()]).double()
    ref = torch.cat([ref_grads[n].flatten() for n in grads]).double()
    cos = torch.nn.functional.cosine_similarity(flat, ref, dim=0).item()
    assert cos > (0.99 if bf16 else 0.99999), cos
    if not bf16:
        for n, g in grads.items():
            torch.testing.assert_close(g, ref_grads[n], **tol, msg=n)


REAL_VLM = os.environ.get("HARDNEG_VLM_PATH", "/models/Qwen2.5-VL-3B-Instruct")


@run_if(min_cuda_gpus=1)
@pytest.mark.skipif(
    not os.path.isfile(os.path.join(REAL_VLM, "config.json")),
    reason=f"no VLM weights at {REAL_VLM} (set HARDNEG_VLM_PATH to a local Qwen2.5-VL folder)",
)
def test_real_vlm_captions_reflects_and_measures_attention(tmp_path):
    """A real VLM by local path (bf16 on the GPU): captions of synthetic-world scenes, look-again reflection
    (requester without the image, responder + summariser with it), and the visual-attention meter."""
    from datamodules.preprocess.vlm import AttentionScorer
    from lightning_modules.reflection.caption import main

    out = tmp_path / "caps.jsonl"
    s = main(
        [
            "world:test:16",
            "captioner=vlm",
            f"captioner.model={REAL_VLM}",
            "reflect=true",
            "reflector=vlm",
            f"reflector.model={REAL_VLM}",
            "image_size=224",
            "batch_size=8",
            f"output={out}",
        ]
    )
    assert s["captioned"] >= 12, s
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(x["caption"] and isinstance(x["trace"], list) for x in lines)
    assert any(x["trace"] and x["trace"][0]["qa"] for x in lines)
    print(f"real VLM: truth {s['initial_truth_rate']} -> {s['truth_rate']} %, revised {s['revised']}")
    from PIL import Image

    v = AttentionScorer(REAL_VLM).score(
        [Image.new("RGB", (224, 224), "red")] * 2, ["a red square", "two cats"]
    )
    assert v.shape == (2,) and bool(((v > 0) & (v < 1)).all())
