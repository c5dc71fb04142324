"""The context encoder's masked reconstruction loss (Pathak et al., "Context
Encoders: Feature Learning by Inpainting", CVPR 2016, Eq. 1). The masks are
drawn by `ssl_runner/views/masks.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_l2_loss(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The reconstruction loss of Eq. 1, ||M * (x - F((1 - M) * x))||^2, as a
    mean: the squared error averaged over the masked pixels and their
    channels, pooled over the batch (an image with a larger region counts
    more). `mask` (bool, N x 1 x H x W or N x C x H x W, True = masked)
    broadcasts over the channels. Unmasked pixels neither change the value
    nor receive gradient (selected out before squaring, so not even a
    non-finite prediction there leaks in); an empty mask gives 0."""
    mask = mask.expand_as(prediction)
    error = torch.where(mask, prediction - target, torch.zeros((), dtype=prediction.dtype, device=prediction.device))
    return error.square().sum() / mask.sum().clamp_min(1)


__all__ = ["masked_l2_loss"]
