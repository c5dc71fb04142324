"""Inpainting masks of the context encoder (Pathak et al., "Context
Encoders: Feature Learning by Inpainting", CVPR 2016).

Every mask generator returns a bool tensor N x 1 x H x W, True where a pixel is
dropped (to be inpainted), on `device`, its randomness drawn from `generator`
(which must live on that device) or from torch's global generator. Each masks
at most a quarter of the image, as the paper's three kinds do (Sec. 3.3).
The masked reconstruction loss is `ssl_runner/losses/inpainting.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.protocol import Device

MASK_KINDS = ("centre", "random_block", "random_region")
# The largest masked share of an image (Sec. 3.3: every kind removes up to a quarter).
MAX_MASKED_FRACTION = 0.25
# A random region's outline: noise on a coarse grid (a finer one frays it into
# speckles), weighted against the distance to its centre (more splits it into
# several pieces: 0.5 leaves 4 % of regions in two pieces at 32 px, 0.8 24 %).
REGION_NOISE_GRID = 4
REGION_ROUGHNESS = 0.5


def _block(top: Tensor, left: Tensor, side_h: int, side_w: int, height: int, width: int, device: Device) -> Tensor:
    """N x 1 x H x W, True inside the side_h x side_w box at (top, left) of each image."""
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side_h)  # N x H
    in_columns = (columns >= left[:, None]) & (columns < left[:, None] + side_w)  # N x W
    return (in_rows[:, :, None] & in_columns[:, None, :]).unsqueeze(1)


def centre_mask(n: int, height: int, width: int, device: Device = None,
                generator: torch.Generator | None = None) -> Tensor:
    """The central block of half the height and half the width, a quarter of
    the image (Sec. 3.3 "central region"), the same for every image;
    `generator` is accepted for a common signature and unused."""
    side_h, side_w = height // 2, width // 2
    top = torch.full((n,), (height - side_h) // 2, device=device)
    left = torch.full((n,), (width - side_w) // 2, device=device)
    return _block(top, left, side_h, side_w, height, width, device)


def random_block_mask(n: int, height: int, width: int, device: Device = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """One block of half the height and half the width (a quarter of the
    image) per image, its top-left corner uniform over every position that
    keeps it inside the image (Sec. 3.3 "random block"). The paper drops
    several smaller, possibly overlapping blocks covering up to a quarter;
    one block of exactly a quarter keeps the task's difficulty fixed and is
    what `centre_mask` is at a random place."""
    side_h, side_w = height // 2, width // 2
    top = torch.randint(0, height - side_h + 1, (n,), device=device, generator=generator)
    left = torch.randint(0, width - side_w + 1, (n,), device=device, generator=generator)
    return _block(top, left, side_h, side_w, height, width, device)


def random_region_mask(n: int, height: int, width: int, min_fraction: float = 0.1, device: Device = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """Arbitrarily shaped regions (Sec. 3.3 "random region"). The paper pastes
    randomly placed and scaled PASCAL VOC segmentation shapes; without such
    shapes, each image gets one blob: the k pixels of highest score
        REGION_ROUGHNESS x smooth noise - distance to a random centre,
    the distance in image sides, the centre uniform over the image, the
    noise uniform on a REGION_NOISE_GRID^2 grid upsampled bilinearly. The
    distance makes the region one piece around its centre (96 % of regions
    are one 4-connected piece at 32 px, 95 % at 224 px), the noise gives it
    an irregular outline. k = floor(f H W) with f ~ U(min_fraction, 1/4)
    per image (at least one pixel), so a region never covers more than a
    quarter of the image."""
    if not 0.0 < min_fraction <= MAX_MASKED_FRACTION:
        raise ValueError(f"min_fraction must be in (0, {MAX_MASKED_FRACTION}], got {min_fraction}")
    noise = torch.rand(n, 1, REGION_NOISE_GRID, REGION_NOISE_GRID, device=device, generator=generator)
    smooth = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=True).view(n, height, width)
    centre_y = torch.rand(n, 1, 1, device=device, generator=generator) * height
    centre_x = torch.rand(n, 1, 1, device=device, generator=generator) * width
    rows = torch.arange(height, device=device).view(1, height, 1) + 0.5  # pixel centres
    columns = torch.arange(width, device=device).view(1, 1, width) + 0.5
    distance = torch.hypot(rows - centre_y, columns - centre_x) / max(height, width)
    score = (REGION_ROUGHNESS * smooth - distance).flatten(1)
    fraction = torch.rand(n, device=device, generator=generator) * (MAX_MASKED_FRACTION - min_fraction) + min_fraction
    counts = (fraction * height * width).floor().long().clamp_(min=1)
    # Rank of every pixel within its image (0: highest score); the `count` highest are masked.
    ranks = score.argsort(dim=1, descending=True).argsort(dim=1)  # the inverse permutation
    return (ranks < counts[:, None]).view(n, 1, height, width)


def draw_mask(kind: str, n: int, height: int, width: int, min_region_fraction: float = 0.1, device: Device = None,
              generator: torch.Generator | None = None) -> Tensor:
    """The mask of `kind` ("centre", "random_block" or "random_region") for n images."""
    if kind == "centre":
        return centre_mask(n, height, width, device, generator)
    if kind == "random_block":
        return random_block_mask(n, height, width, device, generator)
    if kind == "random_region":
        return random_region_mask(n, height, width, min_region_fraction, device, generator)
    raise ValueError(f"unknown mask kind '{kind}' (one of {', '.join(MASK_KINDS)})")


__all__ = ["MASK_KINDS", "MAX_MASKED_FRACTION", "centre_mask", "draw_mask", "random_block_mask", "random_region_mask"]
