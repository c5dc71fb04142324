"""The base of every augmentation with explicitly sampled parameters, and the
samplers they draw them with.

Each atomic augmentation has `sample(n, ...)`, which draws one row of
parameters per image as tensors, and `apply(images, params)`, a pure function
of the images and those parameters. So a caller can copy one augmentation's
parameters from one view into another (LooC's leave-one-out views), and the
same vectorised code runs per image (N = 1, in DataLoader workers) or batched
on the accelerator after transfer. No PIL, no Python loop over images:
everything works on the device of the tensors it is given.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssl_runner.views.protocol import Device


def uniform(n: int, low: float, high: float, device: Device, generator: torch.Generator | None) -> Tensor:
    """n floats ~ U(low, high)."""
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def coin(n: int, p: float, device: Device, generator: torch.Generator | None) -> Tensor:
    """n booleans, each True with probability p (never for p = 0, always for p = 1)."""
    return torch.rand(n, device=device, generator=generator) < p


def log_uniform(n: int, low: float, high: float, device: Device, generator: torch.Generator | None) -> Tensor:
    """n floats whose logarithm is ~ U(log low, log high): a factor range like
    [1/2, 2] treats shrinking and growing alike."""
    return torch.exp(uniform(n, math.log(low), math.log(high), device, generator))


class Augmentation:
    """One atomic augmentation: parameters sampled per image, then applied.

    `sample` returns tensors with a leading dimension of n on `device`, drawn
    from `generator` (which must live on that device); `apply` takes float
    images N x C x H x W in [0, 1] and depends on nothing but its arguments.
    """

    name: str = ""
    # Whether `apply` only moves pixels (a flip, a quarter turn), so that it gives
    # the same result on uint8 images as on their float conversion.
    moves_pixels_only: bool = False

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError


__all__ = ["Augmentation", "coin", "log_uniform", "uniform"]
