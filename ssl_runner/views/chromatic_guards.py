"""Context prediction's guards against the chromatic-aberration shortcut
(Doersch, Gupta & Efros, ICCV 2015, Sec. 4.2): lenses shift colour channels
differently towards the image border, so a patch's colour fringes tell where
it lies. Two remedies, as pure functions of the patches: project out the
green-magenta axis, or keep one channel and replace the others with noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The green-magenta colour axis (-1, 2, -1) / sqrt(6) in RGB (Sec. 4.2). It is
# orthogonal to gray (1, 1, 1), so projecting it out keeps grays unchanged and
# needs no centring: a gray offset has no component along it.
GREEN_MAGENTA = (-1 / math.sqrt(6), 2 / math.sqrt(6), -1 / math.sqrt(6))

# Dropped channels are noise around mid-gray: after the usual normalisation by
# a dataset mean near 0.5 they are zero-mean noise, as the paper's dropped
# channels are after its per-patch mean subtraction.
DROPPED_CHANNEL_MEAN = 0.5

CHROMATIC_GUARDS = ("none", "drop_channels", "project")


def project_out_green_magenta(images: Tensor) -> Tensor:
    """Each pixel's RGB colour x replaced by its projection x - (x . a) a onto
    the plane orthogonal to the green-magenta axis a = (-1, 2, -1) / sqrt(6):
    the paper's "projection" (Sec. 4.2), I - B^T B / (B B^T) with B = (-1, 2, -1).

    Green and magenta shift towards gray (pure green becomes gray 1/3) and
    grays are unchanged. Not clamped, which would undo the projection: [0, 1]
    colours come out in [-1/6, 7/6].
    """
    axis = torch.tensor(GREEN_MAGENTA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    along = (images * axis).sum(dim=-3, keepdim=True)
    return images - along * axis


def drop_channels(patches: Tensor, keep: Tensor, noise: Tensor, noise_std: float) -> Tensor:
    """N x 3 x P x P patches with every channel but keep[i] (long N, in 0..2)
    replaced by DROPPED_CHANNEL_MEAN + noise_std * noise: the paper's "color
    dropping" (Sec. 4.2). noise[i] (N x 2 x P x P, standard normal) fills
    channels keep[i] + 1 and keep[i] + 2 (mod 3), in that order."""
    n, _, height, width = patches.shape
    keep = keep.to(patches.device)
    dropped = (keep.view(n, 1) + torch.arange(1, 3, device=patches.device)) % 3  # N x 2
    fill = noise.to(device=patches.device, dtype=patches.dtype) * noise_std + DROPPED_CHANNEL_MEAN
    return patches.scatter(1, dropped.view(n, 2, 1, 1).expand(n, 2, height, width), fill)


__all__ = ["CHROMATIC_GUARDS", "DROPPED_CHANNEL_MEAN", "GREEN_MAGENTA", "drop_channels", "project_out_green_magenta"]
