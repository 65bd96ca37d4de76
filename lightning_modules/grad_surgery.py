"""Gradient surgery between two groups of loss terms (README "Relational binding": does the relational objective
compete with the contrastive one for the same updates?).

Each group's gradient is taken separately (one backward pass per group through the shared forward graph); then

  measure — the plain sum (the default training gradient), with the groups' cosine logged;
  pcgrad  — where the two conflict (negative dot product), each is projected onto the normal plane of the other
            (Yu et al. 2020, "Gradient surgery for multi-task learning"), then summed;
  protect — only the second group is projected: a conflicting component of the second group's gradient is removed,
            so to first order its updates do not undo the first group's (the first group is unchanged);
  split   — no projection: the first group's gradient is the backward gradient (`p.grad`) and the second's is put
            on each parameter as `p.grad_b`, for `lightning_modules.optim.SplitAdamW` (optimizer=split_adamw), which
            normalises each with its own Adam moments.

`GradSurgery.backward_target` returns a surrogate scalar whose gradient is the combined gradient, so Lightning's
automatic optimisation works unchanged. Costs one extra backward pass per step. One device only (the module refuses
a multi-process strategy: the per-group gradients are taken outside the strategy's backward, untested under DDP/FSDP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

Mode = Literal["measure", "pcgrad", "protect", "split"]


class GradSurgery:
    """Args:
    groups: two lists of loss-term names (a term's name is its `<name>_loss` key without `_loss`); every `*_loss`
        term the loss returns must be in exactly one group.
    mode: measure | pcgrad | protect (see module docstring).
    """

    def __init__(self, groups: Sequence[Sequence[str]], mode: Mode = "pcgrad") -> None:
        if mode not in ("measure", "pcgrad", "protect", "split"):
            raise ValueError(f"module.grad_surgery.mode must be measure|pcgrad|protect|split, got {mode!r}")
        if len(groups) != 2 or not all(len(g) for g in groups):
            raise ValueError(
                f"module.grad_surgery.groups: expected two non-empty lists of loss terms, got {groups!r}"
            )
        names = [n for g in groups for n in g]
        if len(set(names)) != len(names):
            raise ValueError(f"module.grad_surgery.groups: a term is in both groups: {groups!r}")
        self.groups = [list(g) for g in groups]
        self.mode = mode

    def group_losses(self, terms: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        loss_terms = {k[: -len("_loss")]: v for k, v in terms.items() if k.endswith("_loss")}
        known = {n for g in self.groups for n in g}
        unknown = sorted(set(loss_terms) - known)
        if unknown:
            raise ValueError(
                f"module.grad_surgery.groups: loss terms {unknown} are in no group (groups: {self.groups})"
            )
        out = []
        for g in self.groups:
            parts = [loss_terms[n] for n in g if n in loss_terms]
            out.append(torch.stack(parts).sum() if parts else None)
        return out

    def combine(
        self, g_a: list[torch.Tensor], g_b: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The combined gradient of two per-parameter gradient lists, and {cos, conflict, norm_a, norm_b} (0-d
        tensors: the groups' cosine, 1 if they conflict, and each group's gradient norm)."""
        dot = sum((a * b).sum() for a, b in zip(g_a, g_b))
        na2 = sum((a * a).sum() for a in g_a)
        nb2 = sum((b * b).sum() for b in g_b)
        tiny = torch.finfo(dot.dtype).tiny
        cos = dot / (na2.sqrt() * nb2.sqrt()).clamp_min(tiny)
        conflict = (dot < 0).to(dot.dtype)
        # Branch-free (no host synchronisation): the projections are multiplied by `conflict`.
        if self.mode == "split":
            out = list(g_a)  # g_b goes to the optimizer separately (backward_target)
        elif self.mode == "measure":
            out = [a + b for a, b in zip(g_a, g_b)]
        else:
            cb = conflict * dot / nb2.clamp_min(tiny)  # a's component along b
            ca = conflict * dot / na2.clamp_min(tiny)  # b's component along a
            if self.mode == "pcgrad":
                out = [(a - cb * b) + (b - ca * a) for a, b in zip(g_a, g_b)]
            else:  # protect: only b is projected
                out = [a + (b - ca * a) for a, b in zip(g_a, g_b)]
        stats = {"cos": cos, "conflict": conflict, "norm_a": na2.sqrt(), "norm_b": nb2.sqrt()}
        return out, {k: v.detach() for k, v in stats.items()}

    def backward_target(
        self, terms: Mapping[str, torch.Tensor], params: Sequence[torch.nn.Parameter]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A scalar whose gradient w.r.t. `params` is the combined gradient of the two groups."""
        loss_a, loss_b = self.group_losses(terms)
        live = [x for x in (loss_a, loss_b) if x is not None and x.requires_grad]
        if len(live) < 2:  # one group absent (or constant) this step: the plain sum
            return torch.stack([x for x in (loss_a, loss_b) if x is not None]).sum(), {}
        g_a = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
        g_b = torch.autograd.grad(loss_b, params, allow_unused=True)
        g_a = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_a)]
        g_b = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_b)]
        combined, stats = self.combine(g_a, g_b)
        if self.mode == "split":
            for p, g in zip(params, g_b):
                p.grad_b = g.detach()
        target = sum((p * g.detach()).sum() for p, g in zip(params, combined))
        return target, stats


__all__ = ["GradSurgery"]
