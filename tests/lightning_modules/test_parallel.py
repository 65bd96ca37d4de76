"""Strategies (lightning_modules/parallel.py): FSDP2 and DDP give the single-device loss and gradients on the same
batch; the uint8 loader path is exact; the 1-element logit scale loads old 0-d checkpoints."""

from __future__ import annotations

import os
import random

import pytest
import torch
from PIL import Image

from datamodules.dataset import ClipDataset, collate
from datamodules.sources.synthetic import SyntheticWorldSource
from lightning_modules.clip_module import ClipModule
from lightning_modules.losses.base import LossSum
from lightning_modules.losses.contrastive import ContrastiveLoss
from lightning_modules.model_factory import ModelSpec
from lightning_modules.parallel import FSDP2Strategy, ddp, is_sharded, shard_model
from tests.helpers import free_port


def make_module(seed: int = 0) -> ClipModule:
    torch.manual_seed(seed)
    return ClipModule(
        ModelSpec(name="tiny-vit"),
        LossSum({"contrastive": ContrastiveLoss()}),
        optimizer=lambda params: torch.optim.AdamW(params),
    )


def make_batch(indices: list[int], spec: ModelSpec | None = None):
    spec = spec or ModelSpec(name="tiny-vit")
    source = SyntheticWorldSource(num_train=16, num_val=0, num_test=0)
    ds = ClipDataset(source.records("train"), spec.uint8_transform(), spec.tokenizer())
    return collate([ds[i] for i in indices])


def loss_and_grads(module: ClipModule, batch, *, device: str = "cpu", autocast_bf16: bool = False):
    """One forward/backward of the module's own path (normalise, one model forward, fp32 losses)."""
    module.to(device)
    batch.images_XCHW, batch.texts_YL = batch.images_XCHW.to(device), batch.texts_YL.to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast_bf16):
        total, _ = module.compute_loss(module.loss_inputs(batch))
    total.backward()
    grads = {}
    for name, p in module.model.named_parameters():
        if p.grad is None:  # unused by this loss (none in open_clip's CLIP; kept out of the comparison)
            continue
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name.removeprefix("module.")] = g.detach().float().cpu()
    return total.detach().float().cpu(), grads


def _worker(rank, world, port, mode, backend, device, bf16, out):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    if device == "cuda":
        torch.cuda.set_device(rank)
    module = make_module()
    per = 8 // world
    batch = make_batch(list(range(rank * per, (rank + 1) * per)))
    if mode.startswith("fsdp"):
        if mode == "fsdp_checkpointing":  # activation checkpointing inside the shard units
            module.model.set_grad_checkpointing(True)
        module.model.to(device)
        shard_model(
            module.model,
            init_device_mesh(device, (world,)),
            param_dtype=torch.bfloat16 if bf16 else None,
            reduce_dtype=torch.float32,
        )
        assert is_sharded(module.model)
    else:
        module.model = torch.nn.parallel.DistributedDataParallel(module.model.to(device))
    loss, grads = loss_and_grads(module, batch, device=device, autocast_bf16=bf16)
    losses = [None] * world
    dist.all_gather_object(losses, loss.item())
    if rank == 0:  # a file, not a queue: shared-memory tensors die with the process
        torch.save((sum(losses) / world, grads), out)
    dist.barrier()
    dist.destroy_process_group()


def run_distributed(
    mode: str, world: int, out, backend: str = "gloo", device: str = "cpu", bf16: bool = False
):
    """(mean loss over ranks, full gradients) of `world` processes, each with its share of the 8-sample batch."""
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, mode, backend, device, bf16, str(out)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return torch.load(out, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "fsdp_checkpointing", "ddp"])
def test_two_process_loss_and_gradients_equal_single_process(mode, tmp_path):
    ref_loss, ref_grads = loss_and_grads(make_module(), make_batch(list(range(8))))
    loss, grads = run_distributed(mode, world=2, out=tmp_path / "grads.pt")
    assert abs(loss - ref_loss.item()) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_uint8_loader_path_is_bit_identical_to_the_float_transform():
    spec = ModelSpec(name="tiny-vit")
    module = make_module()
    rng = random.Random(0)
    images = [
        Image.new("RGB", (48, 48), (200, 30, 60)),  # already at the model's size: not resampled
        Image.frombytes("RGB", (40, 30), bytes(rng.randrange(256) for _ in range(40 * 30 * 3))),  # resized
        Image.frombytes("L", (48, 48), bytes(rng.randrange(256) for _ in range(48 * 48))),  # grayscale
    ]
    for im in images:
        u8 = spec.uint8_transform()(im)
        assert u8.dtype == torch.uint8 and u8.shape == (3, 48, 48)
        assert torch.equal(module.normalize_images(u8[None])[0], spec.image_transform()(im))


def test_logit_scale_is_one_element_and_old_scalar_states_load(tmp_path):
    spec = ModelSpec(name="tiny-vit")
    model = spec.build()
    assert model.logit_scale.shape == (1,)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    old["logit_scale"] = torch.tensor(3.25)  # open_clip's (and this project's earlier) 0-d layout
    fresh = spec.build()
    fresh.load_state_dict(old, strict=True)
    assert fresh.logit_scale.shape == (1,) and fresh.logit_scale.item() == 3.25
    # A LightningModule checkpoint (prefix model.) and its AdamW moments of the 0-d scale.
    module = make_module()
    ckpt = {
        "optimizer_states": [
            {
                "state": {
                    0: {
                        "step": torch.tensor(3.0),
                        "exp_avg": torch.tensor(0.1),
                        "exp_avg_sq": torch.tensor(0.01),
                    }
                }
            }
        ]
    }
    module.on_load_checkpoint(ckpt)
    st = ckpt["optimizer_states"][0]["state"][0]
    assert st["exp_avg"].shape == (1,) and st["exp_avg_sq"].shape == (1,) and st["step"].ndim == 0
    module.load_state_dict({f"model.{k}": v for k, v in old.items()}, strict=True)
    assert module.model.logit_scale.item() == 3.25


def test_strategy_configs_build_and_reject_bad_values():
    s = FSDP2Strategy(param_dtype="bfloat16", activation_checkpointing=True)
    assert s._save_distributed_checkpoint is False and s.shard_modules[0] == "ResidualAttentionBlock"
    with pytest.raises(ValueError, match="strategy.param_dtype"):
        FSDP2Strategy(param_dtype="bf8")
    with pytest.raises(ValueError, match="strategy.start_method"):
        ddp(start_method="thread")
    assert ddp(start_method="spawn")._start_method == "spawn"


def test_throughput_is_measured_over_the_steps_between_logging_steps(monkeypatch):
    """`train/samples_per_second` and `train/data_wait_fraction` cover every step since the previous logging step
    (with an asynchronous GPU one step's host interval says little; a window with one synchronisation in it
    measures the device's rate). Host clock scripted: steps of 1 s compute, each preceded by a 0.25 s fetch except
    one slow fetch of 2 s; batches of 4 positives on 2 ranks; logging every 4th step."""
    import types

    import lightning_modules.clip_module as cm

    module = make_module()
    clock = {"t": 100.0}
    monkeypatch.setattr(cm.time, "perf_counter", lambda: clock["t"])
    logged: list[tuple[int, str, float]] = []
    step = {"i": 0}
    monkeypatch.setattr(module, "log", lambda k, v, **kw: logged.append((step["i"], k, v)))
    monkeypatch.setattr(module, "_logging_step", lambda: (step["i"] + 1) % 4 == 0)
    module._trainer = types.SimpleNamespace(world_size=2)
    batch = types.SimpleNamespace(num_pos=4)
    for i in range(9):
        step["i"] = i
        clock["t"] += 2.0 if i == 5 else 0.25  # fetch
        module.on_train_batch_start(batch, i)
        clock["t"] += 1.0  # the step
        module.on_train_batch_end(None, batch, i)
    rates = {i: v for i, k, v in logged if k == "train/samples_per_second"}
    waits = {i: v for i, k, v in logged if k == "train/data_wait_fraction"}
    assert sorted(rates) == sorted(waits) == [3, 7]
    # step 3: starts of steps 0..3, 3 intervals of 1.25 s; step 7: starts of 3..7, step 5's fetch took 2 s
    assert rates[3] == pytest.approx(3 * 8 / 3.75) and waits[3] == pytest.approx(0.75 / 3.75)
    assert rates[7] == pytest.approx(4 * 8 / 6.75) and waits[7] == pytest.approx(2.75 / 6.75)
    module.on_validation_epoch_start()  # validation time is not counted: the window restarts
    assert module._win_t0 is None


@pytest.mark.parametrize(
    "state,expected",
    [
        ({"global_step": 9}, True),  # every log_every_n_steps: Lightning writes these
        ({"global_step": 10}, False),
        ({"global_step": 10, "should_stop": True}, True),
        ({"global_step": 49, "max_steps": 50, "log_every_n_steps": 7}, True),  # the run's final step
        (
            {"global_step": 12, "last_batch": True},
            False,
        ),  # an epoch end mid-run: Lightning would not write it
        ({"global_step": 12, "last_batch": True, "max_steps": -1, "current_epoch": 2, "max_epochs": 3}, True),
        (
            {"global_step": 12, "last_batch": True, "max_steps": 1000, "current_epoch": 0, "max_epochs": 1},
            True,
        ),
    ],
)
def test_logging_steps_are_the_steps_lightning_writes_and_the_final_one(state, expected):
    import types

    module = make_module()
    progress = types.SimpleNamespace(is_last_batch=state.get("last_batch", False))
    module._trainer = types.SimpleNamespace(
        global_step=state["global_step"],
        log_every_n_steps=state.get("log_every_n_steps", 10),
        should_stop=state.get("should_stop", False),
        max_steps=state.get("max_steps", 100),
        max_epochs=state.get("max_epochs", -1),
        current_epoch=state.get("current_epoch", 0),
        fit_loop=types.SimpleNamespace(epoch_loop=types.SimpleNamespace(batch_progress=progress)),
    )
    assert module._logging_step() is expected
