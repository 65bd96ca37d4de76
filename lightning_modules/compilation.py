"""torch.compile for training runs: `module.compile.enabled=true` (README "Scale", "Compilation").

The model's forward is compiled in place (`nn.Module.compile`): parameter names, `state_dict` keys and checkpoints
stay those of the eager model, so evaluate.py, export and resume read a compiled run's checkpoints unchanged. The
losses stay eager (their kind selection builds index lists on the host). Applied when fitting starts, after the
strategy has wrapped or sharded the model:

    scope=model   the whole forward (both towers) is one compiled region: the most fusion; single device and DDP.
    scope=blocks  each transformer block / ResNet bottleneck is compiled on its own (torchtitan's recipe for FSDP2:
                  the FSDP all-gather and reshard hooks run between compiled blocks, not inside a graph).
    scope=auto    blocks when the model is FSDP2-sharded, else model.

Shapes: a training batch's image count (positives + image negatives), caption count and token columns (the loader
drops padding columns, keeping a multiple of 4, or of 8 when compiling: `CompileSpec.columns_multiple`) change from
batch to batch. Left alone, torch compiles the first shape statically and recompiles once per dimension that changes;
with `dynamic: null`, `ClipModule.encode` marks the ones that will change dynamic before the first call
(`CompileSpec.mark_inputs`), so one graph serves all training batches.
Validation and test run the eager forward (`eager_unless`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_modules.parallel import DEFAULT_SHARD_MODULES, is_sharded

log = logging.getLogger(__name__)

SCOPES = ("auto", "model", "blocks")
# Token columns of a compiled run come in multiples of this: inductor's Triton kernels guard on a symbolic size
# being a multiple of 8 (`is_aligned_realized_tensor`), so with the loader's usual multiple of 4 a compiled CUDA run
# got a second graph at its first 12- or 20-column batch (seen on an H200, torch 2.11: recompile reason
# `(text.size()[1] % 8) == 0`). A batch that needs the whole context (77 for ViT-B/32) still gets its own graph.
COLUMN_ALIGN = 8
MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class CompileSpec:
    """Args:
    enabled: compile the model's forward for training (false: eager).
    scope: auto | model | blocks (module docstring).
    mode: torch.compile mode: null/default, reduce-overhead (CUDA graphs: only with fixed shapes, i.e. no
        hard-negative generators), max-autotune, max-autotune-no-cudagraphs.
    dynamic: null (the token columns symbolic from the start, the image/caption counts too when the batch carries
        hard negatives: one graph; any other dimension that changes is made symbolic at its first change by torch's
        automatic dynamic shapes), true (everything symbolic), false (one graph per shape; recompiles up to torch's
        limit, then runs eager).
    fullgraph: true: a graph break is an error instead of a split graph.
    backend: torch.compile backend (inductor; 'eager' / 'aot_eager' to debug a compile problem).
    blocks: class names compiled one by one under scope=blocks (matched along each module's class hierarchy, so
        FSDP2's FSDP<Name> classes match too).
    """

    enabled: bool = False
    scope: str = "auto"
    mode: str | None = None
    dynamic: bool | None = None
    fullgraph: bool = False
    backend: str = "inductor"
    # by default what scope=blocks compiles are the FSDP2 units (open_clip's transformer blocks, ResNet bottlenecks)
    blocks: tuple[str, ...] = field(default=DEFAULT_SHARD_MODULES)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"module.compile.scope: expected one of {list(SCOPES)}, got {self.scope!r}")
        if self.mode not in MODES:
            raise ValueError(f"module.compile.mode: expected one of {list(MODES)}, got {self.mode!r}")
        if self.dynamic not in (None, True, False):
            raise ValueError(f"module.compile.dynamic: expected null, true or false, got {self.dynamic!r}")
        self.blocks = tuple(self.blocks)
        # torch's process-wide settings patched by apply(retains_graph=True), undone by restore()
        self._patched = contextlib.ExitStack()

    def options(self) -> dict:
        return {
            "mode": self.mode,
            "dynamic": self.dynamic,
            "fullgraph": self.fullgraph,
            "backend": self.backend,
        }

    def columns_multiple(self, multiple: int | None) -> int | None:
        """The loader's token-column multiple for this run: `multiple` (the model's, `ModelSpec.text_trim_multiple`;
        None = no trimming), raised to a multiple of `COLUMN_ALIGN` when compiling (one graph on CUDA)."""
        if not self.enabled or multiple is None:
            return multiple
        return math.lcm(multiple, COLUMN_ALIGN)

    def mark_inputs(self, images: torch.Tensor, texts: torch.Tensor, *, counts_vary: bool) -> None:
        """With `dynamic: null`, marks the input dimensions that change between training batches as dynamic before
        the first compiled call, so one graph serves the run instead of a static graph and one or two recompiles
        (each ~20-30 s for a tiny CLIP on 2 CPU cores): the token columns always (the loader drops padding columns
        per batch), the image and caption counts only when the batch carries hard negatives (`counts_vary`: their
        number changes per batch; without them the counts are the fixed batch size, and static counts make faster
        kernels: measured on the CPU, a symbolic image count cost a tiny ViT step +35%, a symbolic column count
        +8%; BENCHMARKS.md "torch.compile"). A dimension left static that changes anyway is made dynamic by
        torch's automatic dynamic shapes at its first change."""
        if not self.enabled or self.dynamic is not None:
            return
        torch._dynamo.maybe_mark_dynamic(texts, 1)
        if counts_vary:
            torch._dynamo.maybe_mark_dynamic(images, 0)
            torch._dynamo.maybe_mark_dynamic(texts, 0)

    def eager_unless(self, training: bool):
        """A context in which the compiled modules run eagerly unless `training`: validation, test and
        benchmarks use the eager forward (no_grad and inference mode would each need graphs of their own, and the
        per-block graphs share torch's recompile limit)."""
        if self.enabled and not training:
            return torch.compiler.set_stance("force_eager")
        return contextlib.nullcontext()

    def resolve_scope(self, model: nn.Module) -> str:
        if self.scope != "auto":
            return self.scope
        return "blocks" if is_sharded(model) else "model"

    def apply(self, model: nn.Module, *, retains_graph: bool = False) -> int:
        """Compiles `model` (or its blocks) in place; returns how many modules were compiled (0 when disabled or
        already compiled: fitting twice does not compile twice).

        `retains_graph`: the step runs two backward passes through one forward (`module.grad_surgery`). That needs
        AOTAutograd's donated buffers off (torch raises otherwise), AND a backward compiled afresh: inductor's
        FX-graph cache (on disk) and dynamo's in-memory graphs may hold the same graph's backward compiled WITH
        donated buffers by an earlier run, and its key does not include that setting; served from there, the
        second pass read buffers the first had overwritten (torch 2.14: gradient norm 41.9 instead of 8.3;
        `benchmarks/compile_retain_graph.py`). So donated buffers and the FX-graph cache are turned off and
        dynamo's graphs reset, process-wide, until `restore()` (called when fitting ends)."""
        if not self.enabled:
            return 0
        if retains_graph:
            import torch._functorch.config as functorch_config
            import torch._inductor.config as inductor_config

            self._patched.enter_context(functorch_config.patch(donated_buffer=False))
            self._patched.enter_context(inductor_config.patch(fx_graph_cache=False))
            torch._dynamo.reset()
        scope = self.resolve_scope(model)
        if scope == "model":
            targets = [model]
        else:
            targets = [m for m in model.modules() if _matches(m, self.blocks)]
            if not targets:
                raise ValueError(
                    f"module.compile.scope=blocks: no module of {list(self.blocks)} in "
                    f"{type(model).__name__}; use scope=model or set module.compile.blocks"
                )
        todo = [m for m in targets if not is_compiled(m)]
        for m in todo:
            m.compile(**self.options())
        if todo:
            log.info(
                "torch.compile: %d module(s) (scope=%s, mode=%s, dynamic=%s, backend=%s)",
                len(todo),
                scope,
                self.mode,
                self.dynamic,
                self.backend,
            )
        return len(todo)

    def restore(self) -> None:
        """Undoes the process-wide settings `apply(retains_graph=True)` changed."""
        self._patched.close()


def _matches(module: nn.Module, names: tuple[str, ...]) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)


def is_compiled(module: nn.Module) -> bool:
    """True when `module.compile()` has been applied to this module (its calls run the compiled forward)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compiled_modules(model: nn.Module) -> list[str]:
    """Names of the compiled modules inside `model` ('' is the model itself)."""
    return [name for name, m in model.named_modules() if is_compiled(m)]


__all__ = ["CompileSpec", "compiled_modules", "is_compiled"]
