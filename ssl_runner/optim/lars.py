"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017)."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """Momentum SGD whose update for each parameter tensor is scaled by the
    trust ratio eta * ||w|| / (||g + wd * w|| + eps).

    You et al. 2017, "Large Batch Training of Convolutional Networks": one
    global lr is too large for some layers and too small for others at large
    batch sizes; scaling each layer's step by its weight-to-update norm ratio
    keeps the relative change per step about `eta` for every layer. SimCLR
    (Chen et al. 2020, Appendix B.1) trains with it at batch sizes up to 8192.

    Groups with `lars_exclude=True` (biases and normalisation parameters, see
    `split_decay_groups`) take a plain momentum-SGD step on g + wd * w, as in
    SimCLR: they are few, 1-d and often start at zero or one, so their norm
    says nothing about a layer's scale and adapting them only slows them down.
    A tensor whose weight or update norm is zero gets trust 1. A group's
    `lr_scale` key is for the scheduler and ignored here.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, eps: float = 0.0) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0 or eps < 0:
            raise ValueError("LARS needs lr, momentum, weight_decay and eps >= 0 and eta > 0")
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
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.add(param, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    param_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    trust = torch.where((param_norm > 0) & (update_norm > 0),
                                        group["eta"] * param_norm / (update_norm + group["eps"]),
                                        torch.ones_like(param_norm))
                    update.mul_(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                step = update.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                param.add_(step, alpha=-group["lr"])
        return loss
