"""Parallelism in one place. The `strategy` config group builds the Lightning strategy from here; the model and the
LightningModule never import torch.distributed (the losses gather features through `losses.base`).

    strategy=auto      Lightning's choice for `trainer.devices` (one device: no wrapper)
    strategy=ddp       DistributedDataParallel, one process per device (NCCL on GPUs, gloo on CPUs)
    strategy=ddp_sim   two CPU processes, DDP over gloo (the distributed code paths without a GPU)
    strategy=fsdp      FSDP2: `fully_shard` on every residual block, then on the model (ModelParallelStrategy)

Why FSDP2 through `ModelParallelStrategy` and not `FSDPStrategy`: Lightning's `FSDPStrategy` is FSDP1 (flat
parameters: no per-parameter dtype/sharding, params unreadable outside forward, breaks on repeated forwards of one
unit). FSDP2 shards each parameter as a DTensor, so names, shapes and `state_dict` keys stay those of open_clip, and
mixed precision is a per-module policy. `ModelParallelStrategy` is Lightning's FSDP2 host: it sets up the device
mesh and calls `fully_shard`-aware checkpointing; `FSDP2Strategy` below applies the sharding itself, so the
LightningModule's `configure_model` only builds the model.

Multi-node: Lightning picks the cluster environment (SLURM `srun`, `torchrun`, or its own launcher) from the
environment; set `trainer.num_nodes` and `trainer.devices` (README, "Scale").
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn

log = logging.getLogger(__name__)

# open_clip's transformer blocks and ResNet bottlenecks: each instance becomes one FSDP unit (all-gathered just
# before its forward, freed after), the rest of the model (embeddings, projections, logit scale) the root unit.
DEFAULT_SHARD_MODULES = ("ResidualAttentionBlock", "CustomResidualAttentionBlock", "Bottleneck")
_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def auto() -> str:
    """Lightning's default strategy for the configured devices."""
    return "auto"


def ddp(
    start_method: str = "popen",
    process_group_backend: str | None = None,
    find_unused_parameters: bool = False,
    static_graph: bool = False,
    gradient_as_bucket_view: bool = True,
) -> DDPStrategy:
    """DDP. start_method: popen (the script is relaunched per device; what torchrun and SLURM use) or spawn
    (processes forked from this one: works under pytest and notebooks, CPU tests use it)."""
    if start_method not in ("popen", "spawn", "fork", "forkserver"):
        raise ValueError(
            f"strategy.start_method: expected popen, spawn, fork or forkserver, got {start_method!r}"
        )
    return DDPStrategy(
        start_method=start_method,
        process_group_backend=process_group_backend,
        find_unused_parameters=find_unused_parameters,
        static_graph=static_graph,
        gradient_as_bucket_view=gradient_as_bucket_view,
    )


def _dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise ValueError(f"strategy.{key}: expected one of {sorted(_DTYPES)} or null, got {name!r}")
    return _DTYPES[name]


def is_sharded(module: nn.Module) -> bool:
    """True when the module's parameters are FSDP2 shards (DTensors): read weights from a full state dict then."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def shard_model(
    model: nn.Module,
    mesh: Any,
    *,
    shard_modules: tuple[str, ...] = DEFAULT_SHARD_MODULES,
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
) -> int:
    """Applies FSDP2 to `model` on `mesh`: every submodule whose class name is in `shard_modules` is one unit, the
    model itself the root unit. Mixed precision: parameters all-gathered in `param_dtype` for compute, gradients
    reduce-scattered in `reduce_dtype`; the sharded master weights and the optimizer state stay fp32. Returns the
    number of units (blocks + root)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    units = [m for m in model.modules() if type(m).__name__ in shard_modules]
    for m in units:
        fully_shard(m, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    return len(units) + 1


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over all devices of all nodes; shards the LightningModule's `model`.

    Args:
        shard_modules: class names whose instances are FSDP units (default: open_clip residual blocks, ResNet
            bottlenecks); the model is the root unit.
        reshard_after_forward: free gathered block weights after forward (ZeRO-3); false keeps them until backward
            (ZeRO-2-like: faster, more memory).
        param_dtype: compute dtype of gathered weights: 'auto' (bfloat16 when trainer.precision is bf16-*, else
            fp32), bfloat16, float16, float32.
        reduce_dtype: dtype of the gradient reduce-scatter (float32: exact sums across ranks).
        activation_checkpointing: recompute each transformer block in backward (open_clip's grad checkpointing).
        save_distributed_checkpoint: false (default): `last.ckpt` holds one full, unsharded state dict that
            evaluate.py, export and a single-device resume read; true: a folder of per-rank shards (huge models).
    """

    def __init__(
        self,
        shard_modules: list[str] | tuple[str, ...] = DEFAULT_SHARD_MODULES,
        reshard_after_forward: bool = True,
        param_dtype: str | None = "auto",
        reduce_dtype: str | None = "float32",
        activation_checkpointing: bool = False,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )
        self.shard_modules = tuple(shard_modules)
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype_name = param_dtype
        if param_dtype != "auto":
            _dtype(param_dtype, "param_dtype")
        self.reduce_dtype = _dtype(reduce_dtype, "reduce_dtype")
        self.activation_checkpointing = activation_checkpointing

    def setup_environment(self) -> None:
        # Pure data parallelism: one mesh dimension over every process of every node.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def _param_dtype(self) -> torch.dtype | None:
        if self.param_dtype_name == "auto":
            precision = str(getattr(self.precision_plugin, "precision", "32-true"))
            return torch.bfloat16 if precision.startswith("bf16") else None
        return _dtype(self.param_dtype_name, "param_dtype")

    def setup(self, trainer: Any) -> None:
        module = self.lightning_module
        model = getattr(module, "model", None)
        if not isinstance(model, nn.Module):
            raise TypeError("strategy=fsdp: the LightningModule must build its network as `self.model`")
        if not is_sharded(model):
            model.to(self.root_device)
            # FSDP2 has no sync_module_states: every rank must start from rank 0's weights.
            if torch.distributed.is_initialized() and self.world_size > 1:
                for t in list(model.parameters()) + list(model.buffers()):
                    torch.distributed.broadcast(t.data, src=0)
            if self.activation_checkpointing:
                if not hasattr(model, "set_grad_checkpointing"):
                    raise ValueError(
                        "strategy.activation_checkpointing: the model has no set_grad_checkpointing()"
                    )
                model.set_grad_checkpointing(True)
            units = shard_model(
                model,
                self.device_mesh["data_parallel"],
                shard_modules=self.shard_modules,
                reshard_after_forward=self.reshard_after_forward,
                param_dtype=self._param_dtype(),
                reduce_dtype=self.reduce_dtype,
            )
            if units == 1:
                log.warning(
                    "strategy=fsdp: no module of %s found; the whole model is one FSDP unit",
                    list(self.shard_modules),
                )
            log.info(
                "FSDP2: %d units over %d ranks (param dtype %s)", units, self.world_size, self._param_dtype()
            )
        super().setup(trainer)
