"""Colour maths on RGB images in [0, 1] (channels at dim -3): luma, HSV and
torchvision's brightness, contrast, saturation and hue adjustments, with one
factor per image. Pure functions, on the device of the images; the
augmentations in `augmentations.py` and `exemplar.py` sample their factors.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ITU-R 601-2 luma weights, as PIL's grayscale conversion.
LUMA = (0.299, 0.587, 0.114)


def per_image(values: Tensor, images: Tensor) -> Tensor:
    """A length-N parameter on the images' device, shaped to broadcast over N x C x H x W."""
    return values.to(images.device).view(-1, 1, 1, 1)


def grayscale(images: Tensor) -> Tensor:
    """N x 3 x H x W RGB -> N x 1 x H x W luma."""
    r, g, b = images.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def hue_sixths(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RGB -> (hue in sixths of a turn, not reduced mod 6; chroma; value).

    The hue follows torchvision's `_rgb2hsv` (after PIL): measured from the
    channel holding the maximum; 0 for grays, whose chroma is 0.
    """
    r, g, b = images.unbind(dim=-3)
    value = images.amax(dim=-3)
    chroma = value - images.amin(dim=-3)
    # Masked sums rather than torch.where, which is twice as slow on a CPU; the
    # precedence (red, then green, then blue) is torchvision's.
    is_r = value == r
    is_g = (value == g) & ~is_r
    is_b = ~(is_r | is_g)
    numerator = (g - b) * is_r
    numerator += (b - r + 2.0 * chroma) * is_g
    numerator += (r - g + 4.0 * chroma) * is_b
    # Grays have a zero numerator, so any positive divisor gives them hue 0.
    return numerator / chroma.clamp_min(torch.finfo(chroma.dtype).tiny), chroma, value


def rgb_from_sixths(sixths: Tensor, chroma: Tensor, value: Tensor) -> Tensor:
    """HSV -> RGB in closed form: channel c = V - C clamp(min(k, 4 - k), 0, 1)
    with k = (n + hue in sixths) mod 6 and n = 5, 3, 1 for R, G, B.

    Computed as V - C + C clamp(||m + n - 5| - 3| - 1, 0, 1) with m = hue mod 6,
    the same function (a trapezoid wave of period 6) with the mod taken once, on
    one plane: `remainder` costs as much as ten of the other passes on a CPU,
    and the hue shift is the costliest step of the view recipe there (see
    docs/performance.md). The three channels are one stacked tensor, updated
    in place."""
    offsets = torch.tensor([0.0, -2.0, -4.0], device=sixths.device, dtype=sixths.dtype).view(3, 1, 1)
    ramp = (sixths.remainder(6.0).unsqueeze(-3) + offsets).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return ramp.mul_(chroma.unsqueeze(-3)).add_((value - chroma).unsqueeze(-3))


def rgb_to_hsv(images: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV with every channel in [0, 1] (hue 0 for grays),
    as torchvision's `_rgb2hsv`."""
    sixths, chroma, value = hue_sixths(images)
    saturation = chroma / value.clamp_min(torch.finfo(value.dtype).tiny)  # black: chroma 0, saturation 0
    return torch.stack([(sixths % 6.0) / 6.0, saturation, value], dim=-3)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """HSV in [0, 1] -> RGB, the inverse of `rgb_to_hsv`."""
    hue, saturation, value = images.unbind(dim=-3)
    return rgb_from_sixths(6.0 * hue, value * saturation, value)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision: blend with black, x f."""
    return (images * per_image(factor, images)).clamp(0.0, 1.0)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision: blend with the mean luma of each image."""
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    factor = per_image(factor, images)
    return (factor * images + (1.0 - factor) * mean).clamp(0.0, 1.0)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """torchvision: blend with the image's own grayscale."""
    factor = per_image(factor, images)
    return (factor * images + (1.0 - factor) * grayscale(images)).clamp(0.0, 1.0)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """torchvision: rotate the hue in HSV by `shift` turns, mod 1. Value and
    chroma are kept, so RGB comes back without forming the saturation."""
    sixths, chroma, value = hue_sixths(images)
    sixths += 6.0 * shift.to(images.device).view(-1, 1, 1)
    return rgb_from_sixths(sixths, chroma, value).clamp_(0.0, 1.0)


__all__ = ["LUMA", "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "grayscale",
           "hsv_to_rgb", "hue_sixths", "per_image", "rgb_from_sixths", "rgb_to_hsv"]
