"""Optimizers (SGD, LARS, AdamW), parameter groups and lr schedules."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from ssl_runner.optim.lars import LARS
from ssl_runner.optim.param_groups import LR_SCALING_RULES, scale_lr, split_decay_groups
from ssl_runner.optim.schedules import (SCHEDULES, build_scheduler, constant_factor, steps_factor,
                                        warmup_cosine_factor)

OPTIMIZERS = ("sgd", "lars", "adamw")


def build_optimizer(name: str, param_groups: List[Dict[str, Any]], lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0, nesterov: bool = False, eta: float = 0.001,
                    betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimizer `name` over copies of `param_groups`. A group's lr is
    `lr` x its `lr_scale` unless it sets its own `lr` (the online probe does);
    a group without `weight_decay` gets `weight_decay`. Extra keys (`name`,
    `lars_exclude`, `lr_scale`) stay in the groups; SGD and AdamW ignore them."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; use one of {', '.join(OPTIMIZERS)}")
    groups = []
    for group in param_groups:
        group = dict(group)
        group.setdefault("lr", lr * group.get("lr_scale", 1.0))
        groups.append(group)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


__all__ = ["LARS", "LR_SCALING_RULES", "OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler",
           "constant_factor", "scale_lr", "split_decay_groups", "steps_factor", "warmup_cosine_factor"]
