"""Learning-rate schedules as multipliers of each group's peak lr, stepped
once per optimizer step (not per epoch), so warmup is smooth at any epoch count."""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("warmup_cosine", "constant", "steps")


def _linear_warmup(step: int, warmup_steps: int, warmup_start_ratio: float) -> float:
    return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, warmup_start_ratio: float = 0.0,
                         final_ratio: float = 0.0) -> float:
    """Linear warmup from `warmup_start_ratio` to 1 over `warmup_steps`, then
    half a cosine down to `final_ratio` at `total_steps` (SimCLR, Appendix B.1;
    Loshchilov & Hutter 2017). Once warmup reaches or passes `total_steps`
    there is no decay: the factor stays 1 after warmup."""
    if step < warmup_steps:
        return _linear_warmup(step, warmup_steps, warmup_start_ratio)
    if warmup_steps >= total_steps:
        return 1.0
    t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def constant_factor(step: int, total_steps: int, warmup_steps: int, warmup_start_ratio: float = 0.0) -> float:
    """Linear warmup, then the peak lr; `total_steps` only keeps the signature
    the same as `warmup_cosine_factor`."""
    return _linear_warmup(step, warmup_steps, warmup_start_ratio) if step < warmup_steps else 1.0


def steps_factor(step: int, total_steps: int, warmup_steps: int, warmup_start_ratio: float = 0.0,
                 milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Step decay (He et al. 2016; RotNet's x0.2 at epochs 60, 120, 160):
    `gamma` to the power of the milestones (optimizer steps) reached, times
    the linear warmup while it lasts. Stepped per optimizer step, so with
    milestones at epoch boundaries this is torch's MultiStepLR stepped per
    epoch."""
    factor = gamma ** sum(step >= m for m in milestones)
    return factor * (_linear_warmup(step, warmup_steps, warmup_start_ratio) if step < warmup_steps else 1.0)


def build_scheduler(optimizer: Optimizer, name: str, total_steps: int, warmup_steps: int,
                    warmup_start_ratio: float = 0.0, final_ratio: float = 0.0,
                    milestones: Sequence[int] = (), gamma: float = 0.1) -> LambdaLR:
    """A LambdaLR applying the same factor to every param group (but those
    marked `fixed_lr`), so each group's own lr (backbone, head, online probe)
    is its peak."""
    if name == "warmup_cosine":
        factor = partial(warmup_cosine_factor, total_steps=total_steps, warmup_steps=warmup_steps,
                         warmup_start_ratio=warmup_start_ratio, final_ratio=final_ratio)
    elif name == "constant":
        factor = partial(constant_factor, total_steps=total_steps, warmup_steps=warmup_steps,
                         warmup_start_ratio=warmup_start_ratio)
    elif name == "steps":
        factor = partial(steps_factor, total_steps=total_steps, warmup_steps=warmup_steps,
                         warmup_start_ratio=warmup_start_ratio, milestones=tuple(milestones), gamma=gamma)
    else:
        raise ValueError(f"unknown schedule '{name}'; use one of {', '.join(SCHEDULES)}")
    # A group marked fixed_lr keeps its lr throughout (SimSiam's predictor, Sec. 4.4).
    return LambdaLR(optimizer, [_one if group.get("fixed_lr") else factor for group in optimizer.param_groups])


def _one(step: int) -> float:
    return 1.0
