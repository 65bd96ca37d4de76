"""SplitAdamW: AdamW with one set of moment estimates per gradient source (README "Relational binding").

With `module.grad_surgery.mode=split`, the first group's gradient (e.g. contrastive) lands in `p.grad` and the second's
(e.g. relational) in `p.grad_b`; each is normalised by its own Adam moments and the two updates are summed, so one
source's gradient magnitude does not shrink the other's step (in plain Adam both share one second moment). With no
`grad_b` on any parameter it is AdamW exactly (tested against `torch.optim.AdamW`). Single device only: `grad_b` is not
all-reduced.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class SplitAdamW(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"SplitAdamW: invalid lr={lr}, eps={eps} or betas={betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                sources = [("a", p.grad), ("b", getattr(p, "grad_b", None))]
                if all(g is None for _, g in sources):
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                state["step"] += 1
                t = state["step"]
                p.mul_(1 - lr * wd)
                for name, g in sources:
                    if g is None:
                        continue
                    if f"exp_avg_{name}" not in state:
                        state[f"exp_avg_{name}"] = torch.zeros_like(p)
                        state[f"exp_avg_sq_{name}"] = torch.zeros_like(p)
                    m, v = state[f"exp_avg_{name}"], state[f"exp_avg_sq_{name}"]
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (v / (1 - b2**t)).sqrt_().add_(eps)
                    p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
                p.grad_b = None
        return loss


__all__ = ["SplitAdamW"]
