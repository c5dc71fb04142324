"""CIE Lab colour space, as colorization uses it (Zhang, Isola & Efros,
"Colorful Image Colorization", ECCV 2016): sRGB <-> Lab and the gray image of
a lightness. Pure functions on tensors, on any device.

Images are N x C x H x W with the channels at dim -3 (any leading dims
work): RGB in [0, 1], gamma-encoded sRGB; Lab with L in [0, 100], D65 white.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Linear sRGB -> CIE XYZ (IEC 61966-2-1, D65), one row per X, Y, Z.
SRGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# The D65 white as the matrix's row sums (0.95047, 1.0000001, 1.08883): the
# XYZ of RGB (1, 1, 1), so that white is exactly (100, 0, 0) and every gray
# has a = b = 0 exactly (the usual rounded (0.95047, 1, 1.08883) differs by 1e-7).
D65_WHITE = tuple(sum(row) for row in SRGB_TO_XYZ)
# Its inverse, XYZ -> linear sRGB, computed once in double precision.
XYZ_TO_SRGB = tuple(tuple(row) for row in torch.linalg.inv(torch.tensor(SRGB_TO_XYZ, dtype=torch.float64)).tolist())
# CIE's f(t): cube root above (6/29)^3, a line below.
_DELTA = 6.0 / 29.0


def _mix_channels(images: Tensor, rows) -> Tensor:
    """out[..., i, :, :] = sum_j rows[i][j] images[..., j, :, :], as one matrix
    product over the flattened pixels (3x faster than an einsum on a CPU)."""
    matrix = torch.tensor(rows, device=images.device, dtype=images.dtype)
    pixels = images.reshape(*images.shape[:-2], images.shape[-2] * images.shape[-1])
    return torch.matmul(matrix, pixels).view(*images.shape[:-3], len(rows), *images.shape[-2:])


def srgb_to_linear(rgb: Tensor) -> Tensor:
    """sRGB's transfer function, inverted (gamma-encoded -> linear light)."""
    curve = rgb.clamp_min(0.04045).add_(0.055).div_(1.055).pow_(2.4)
    return torch.where(rgb <= 0.04045, rgb / 12.92, curve)


def linear_to_srgb(linear: Tensor) -> Tensor:
    """sRGB's transfer function (linear light -> gamma-encoded), extended as an
    odd function to the negative values of out-of-gamut colours so that
    `lab_to_rgb` without clamping stays finite and monotone."""
    magnitude = linear.abs()
    curve = magnitude.clamp_min(0.0031308).pow_(1.0 / 2.4).mul_(1.055).sub_(0.055)
    return torch.where(magnitude <= 0.0031308, magnitude * 12.92, curve).mul_(torch.sign(linear))


# Linear sRGB -> XYZ relative to the white (X / Xn, Y / Yn, Z / Zn), and back.
_SRGB_TO_RELATIVE_XYZ = tuple(tuple(v / w for v in row) for row, w in zip(SRGB_TO_XYZ, D65_WHITE))
_RELATIVE_XYZ_TO_SRGB = tuple(tuple(v * w for v, w in zip(row, D65_WHITE)) for row in XYZ_TO_SRGB)


def _lab_f(t: Tensor) -> Tensor:
    """CIE's f: t^(1/3) above (6/29)^3, the tangent line t / (3 (6/29)^2) + 4/29 below."""
    curve = t.clamp_min(_DELTA ** 3).pow_(1.0 / 3.0)
    return torch.where(t > _DELTA ** 3, curve, t / (3 * _DELTA ** 2) + 4.0 / 29.0)


def _lab_f_inverse(f: Tensor) -> Tensor:
    """The inverse of `_lab_f`: f^3 above 6/29, the line below."""
    return torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0))


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0, 1] (channels at dim -3) -> CIE Lab: L in [0, 100], a and b
    roughly in [-86, 98] and [-108, 95] for sRGB colours. No clamping."""
    fx, fy, fz = _lab_f(_mix_channels(srgb_to_linear(rgb), _SRGB_TO_RELATIVE_XYZ)).unbind(dim=-3)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor, clamp: bool = True) -> Tensor:
    """CIE Lab (channels at dim -3) -> sRGB, the inverse of `rgb_to_lab`.

    A Lab value outside the sRGB gamut (e.g. a predicted ab with a dark L)
    has RGB components outside [0, 1]: with `clamp` (the default, for
    display) they are clamped to [0, 1]; with clamp=False they are returned
    as they are (round trips, tests)."""
    lightness, a, b = lab.unbind(dim=-3)
    fy = (lightness + 16.0) / 116.0
    xyz = _lab_f_inverse(torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3))
    rgb = linear_to_srgb(_mix_channels(xyz, _RELATIVE_XYZ_TO_SRGB))
    return rgb.clamp_(0.0, 1.0) if clamp else rgb


def gray_from_lightness(lightness: Tensor) -> Tensor:
    """N x 1 x H x W lightness L -> the gray sRGB image that (L, 0, 0) is, as
    3 equal channels: what a colour network is given of a grayscale image.
    With a = b = 0, XYZ is Y times the white, whose linear RGB is (Y, Y, Y)
    (the white is the matrix's row sums): so gray = sRGB(Y), which equals
    `lab_to_rgb` of (L, 0, 0) up to float rounding, at a third of its cost."""
    gray = linear_to_srgb(_lab_f_inverse((lightness + 16.0) / 116.0)).clamp_(0.0, 1.0)
    return gray.expand(*lightness.shape[:-3], 3, *lightness.shape[-2:])


__all__ = ["D65_WHITE", "SRGB_TO_XYZ", "XYZ_TO_SRGB", "gray_from_lightness", "lab_to_rgb", "linear_to_srgb",
           "rgb_to_lab", "srgb_to_linear"]
