"""Parameter groups (weight decay / LARS exclusion) and learning-rate scaling
from the global batch."""

from __future__ import annotations

import math
from typing import Any, Dict, List

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

NORM_LAYERS = (_NormBase, nn.GroupNorm, nn.LayerNorm)
LR_SCALING_RULES = ("linear", "sqrt", "none")


def split_decay_groups(
    module: nn.Module,
    weight_decay: float,
    exclude_bias_and_norm: bool = True,
    lr_scale: float = 1.0,
    name: str = "",
) -> List[Dict[str, Any]]:
    """The module's trainable parameters as a decayed group and, when
    `exclude_bias_and_norm`, a group of biases, normalisation parameters and
    other tensors of at most one dimension with no weight decay and no LARS
    adaptation (SimCLR, Appendix B.1; You et al. 2017): decaying or adapting
    them shrinks scales and offsets the network needs, without regularising.
    Empty groups are left out; frozen parameters are skipped."""
    prefix = f"{name}." if name else ""
    norm_param_ids = set()
    if exclude_bias_and_norm:
        for submodule in module.modules():
            if isinstance(submodule, NORM_LAYERS):
                norm_param_ids.update(id(p) for p in submodule.parameters(recurse=False))
    decay, no_decay = [], []
    for param_name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        excluded = exclude_bias_and_norm and (
            id(param) in norm_param_ids or param.ndim <= 1 or param_name.endswith("bias"))
        (no_decay if excluded else decay).append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lars_exclude": False,
                       "lr_scale": lr_scale, "name": f"{prefix}decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True,
                       "lr_scale": lr_scale, "name": f"{prefix}no_decay"})
    return groups


def scale_lr(base_lr: float, global_batch: int, reference_batch: int = 256, rule: str = "linear") -> float:
    """The learning rate for `global_batch`, given `base_lr` at `reference_batch`:
    linear (Goyal et al. 2017; SimCLR's 0.3 x B/256) or square root (SimCLR's
    0.075 x sqrt(B), better at small batches, Appendix B.1)."""
    if rule == "linear":
        return base_lr * global_batch / reference_batch
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch / reference_batch)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule '{rule}'; use one of {', '.join(LR_SCALING_RULES)}")
