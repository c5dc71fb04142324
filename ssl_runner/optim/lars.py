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

    `foreach` (default: where every parameter is on a GPU, as torch's own
    optimizers choose) takes a group's step as a handful of multi-tensor
    kernels instead of about eight small kernels per tensor: on a GPU the
    per-tensor loop is bound by kernel launches (ResNet-18 has 62 tensors).
    On the CPU the loop stays, so CPU figures are unchanged; both give the
    same step (tests/test_optim.py).
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, nesterov: bool = False, eps: float = 0.0,
                 foreach: Optional[bool] = None) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0 or eps < 0:
            raise ValueError("LARS needs lr, momentum, weight_decay and eps >= 0 and eta > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov, eps=eps,
                        lars_exclude=False)
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            foreach = self.foreach if self.foreach is not None else all(p.is_cuda for p in params)
            if foreach and params:
                self._foreach_step(group, params)
                continue
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

    def _foreach_step(self, group: dict, params: list) -> None:
        """The loop's step for a whole group, with multi-tensor kernels."""
        updates = torch._foreach_add([p.grad for p in params], params, alpha=group["weight_decay"])
        if not group["lars_exclude"]:
            param_norms = torch.stack(torch._foreach_norm(params))
            update_norms = torch.stack(torch._foreach_norm(updates))
            trust = torch.where((param_norms > 0) & (update_norms > 0),
                                group["eta"] * param_norms / (update_norms + group["eps"]),
                                torch.ones_like(param_norms))
            torch._foreach_mul_(updates, list(trust.unbind()))
        bufs = []
        for param in params:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            bufs.append(state["momentum_buffer"])
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, updates)
        steps = torch._foreach_add(updates, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
        torch._foreach_add_(params, steps, alpha=-group["lr"])
