"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """SGD with momentum whose step for each parameter tensor is scaled by the
    trust ratio eta * ||w|| / ||g + wd * w||, as SimCLR trains (Appendix B.1).

    Groups with `lars_exclude=True` (biases and normalisation parameters, see
    `split_decay_groups`) take a plain momentum-SGD step: their norms say
    nothing about the layer's scale, and adapting them destabilises training.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, eps: float = 0.0) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError("LARS needs lr, momentum and weight_decay >= 0 and eta > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov, eps=eps,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if not group["lars_exclude"]:
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["eta"] * w_norm / (d_norm + group["eps"]), torch.ones_like(w_norm))
                    d.mul_(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d)
                step = d.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.add_(step, alpha=-group["lr"])
        return loss
