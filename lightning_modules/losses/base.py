"""What every loss receives. Shape legend: B positives on this rank, M image negatives, N text negatives,
D embedding dim. Features are L2-normalised; `logit_scale` is already exponentiated (a temperature inverse).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


@dataclass
class LossInputs:
    img_BD: torch.Tensor
    txt_BD: torch.Tensor
    logit_scale: torch.Tensor
    img_neg_MD: torch.Tensor | None = None
    txt_neg_ND: torch.Tensor | None = None
    img_neg_owner_M: torch.Tensor | None = None
    img_neg_pair_M: torch.Tensor | None = None  # index of the paired text negative (I'_C of T'_C), -1 if none
    txt_neg_owner_N: torch.Tensor | None = None
    img_neg_kind: list[str] = field(default_factory=list)
    txt_neg_kind: list[str] = field(default_factory=list)
    step: int | None = None  # the optimizer step being trained (None outside training): for scheduled terms
    total_steps: int | None = None  # the run's trainer.max_steps (None if unknown): fractional schedule steps


def check_schedule(schedule: list | None, name: str) -> list[tuple[int | float, float]]:
    """Validates a `schedule: [[step, weight], ...]` option: from each step on, the term's weight is that value. A
    step is an optimizer step (int >= 0) or a fraction of the run (float in (0, 1): of trainer.max_steps)."""
    out: list[tuple[int | float, float]] = []
    for item in schedule or []:
        ok = len(item) == 2 and (
            (isinstance(item[0], int) and item[0] >= 0) or (isinstance(item[0], float) and 0 < item[0] < 1)
        )
        if not ok:
            raise ValueError(
                f"{name}.schedule: expected [[step, weight], ...] with steps ints >= 0 or fractions of the run in "
                f"(0, 1), got {schedule}"
            )
        out.append((item[0], float(item[1])))
    kinds = {type(s) for s, _ in out}
    if len(kinds) > 1:
        raise ValueError(f"{name}.schedule: steps are all ints or all fractions, got {schedule}")
    if [s for s, _ in out] != sorted({s for s, _ in out}):
        raise ValueError(f"{name}.schedule: steps must be increasing, got {schedule}")
    return out


def weight_at(
    weight: float, schedule: list[tuple[int | float, float]], step: int | None, total_steps: int | None = None
) -> float:
    """The term's weight at training step `step` (the base weight before the first scheduled step, and outside
    training, where step is None). Fractional steps need the run's length (`total_steps`)."""
    if step is None:
        return weight
    for start, w in schedule:
        if isinstance(start, float):
            if not total_steps or total_steps <= 0:
                raise ValueError(
                    "a loss schedule with fractional steps needs trainer.max_steps > 0 (the run's length)"
                )
            start = round(start * total_steps)
        if step >= start:
            weight = w
    return weight


def check_dims(dims: list[int] | tuple[int, int] | None, name: str) -> tuple[int, int] | None:
    """Validates a `dims: [lo, hi]` option (a slice of the embedding a term works in)."""
    if dims is None:
        return None
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims) or not 0 <= dims[0] < dims[1]:
        raise ValueError(
            f"{name}.dims must be [lo, hi] with 0 <= lo < hi (a slice of the embedding), got {dims}"
        )
    return int(dims[0]), int(dims[1])


def subspace(x: torch.Tensor | None, dims: tuple[int, int] | None) -> torch.Tensor | None:
    """Features restricted to the embedding slice `dims` and re-normalised (unchanged when dims is None). A term
    that works in a slice shapes only those coordinates; the full embedding (what retrieval and the benchmarks
    score) is the concatenation, so its cosine is a weighted sum of the slices' cosines."""
    if dims is None or x is None:
        return x
    if dims[1] > x.shape[-1]:
        raise ValueError(f"dims {list(dims)} exceed the embedding size {x.shape[-1]}")
    return torch.nn.functional.normalize(x[..., dims[0] : dims[1]].float(), dim=-1)


def index_to_device(values: list[int], device: torch.device | str) -> torch.Tensor:
    """A host list of indices as a long tensor on `device`, without a host synchronisation. A copy from pageable
    host memory makes the CPU wait until every kernel already queued on the stream has finished (CUDA's
    documented behaviour, `non_blocking` or not), which in a training step removes the CPU/GPU overlap: the GPU
    then idles while the host fetches the next batch. Staged in pinned memory and copied with non_blocking, the
    host runs on (the caching host allocator keeps the pinned buffer alive until the copy is done)."""
    t = torch.tensor(values, dtype=torch.long)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers `x` along dim 0 from every rank, keeping the autograd graph (backward sums the gradients).

    Every rank must pass the same shape (training loaders use drop_last=True).
    """
    _, ws = world()
    if ws == 1:
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


def gather_padded(x_ND: torch.Tensor) -> torch.Tensor:
    """All-gathers a variable number of rows per rank (padded to the largest, padding dropped), with gradients."""
    _, ws = world()
    if ws == 1:
        return x_ND
    n = torch.tensor([x_ND.shape[0]], device=x_ND.device)
    sizes = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    m = max(sizes)
    if m == 0:
        return x_ND
    pad = x_ND.new_zeros((m - x_ND.shape[0], *x_ND.shape[1:]))
    parts = dist_fn.all_gather(torch.cat([x_ND, pad]).contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class LossSum(torch.nn.Module):
    """The configured loss terms (`loss=[contrastive,hardneg_text,...]`): their outputs merged into one dict.
    The module sums every `*_loss` entry; other entries (counts, diagnostics) are only logged."""

    def __init__(self, terms: dict[str, torch.nn.Module]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("loss: no loss term configured (e.g. loss=[contrastive])")
        self.terms = torch.nn.ModuleDict(terms)

    def forward(self, x: LossInputs) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, term in self.terms.items():
            for k, v in term(x).items():
                if k in out:
                    raise ValueError(
                        f"loss.{key}: output '{k}' produced by two terms; give them different names"
                    )
                out[k] = v
        return out
