"""Pixel values: uint8 -> float in [0, 1], per-channel normalisation, and the
unaugmented view the evaluation stages and monitors see.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; float images are taken as [0, 1]."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel (x - mean) / std."""
    mean_t = torch.as_tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    # x / std - mean / std in one pass.
    return torch.addcmul(-mean_t / std_t, images, 1.0 / std_t)


def eval_view(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The unaugmented view: uint8 (or [0, 1] float) images -> float32, normalised."""
    return normalize(to_unit_float(images), mean, std)


__all__ = ["eval_view", "normalize", "to_unit_float"]
