"""CIE Lab colour space and the quantised ab output space of colorization
(Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016).

Pure functions on tensors, on any device: sRGB <-> Lab, the in-gamut ab bins
(derived here from the sRGB gamut), soft encoding of ab values over the bins
(Sec. 2.1), the empirical bin distribution and the class-rebalancing weights
(Sec. 2.1, Eq. 3-4), the rebalanced cross-entropy (Eq. 2) and the annealed
mean that turns predicted bin probabilities into one ab value (Sec. 2.2).

Images are N x C x H x W with the channels at dim -3 (any leading dims
work): RGB in [0, 1], gamma-encoded sRGB; Lab with L in [0, 100], D65 white.
"""

from __future__ import annotations

import functools
from typing import Iterable, Union

import torch
import torch.nn.functional as F
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

PAPER_BIN_COUNT = 313  # the paper's Q (Sec. 2.1); ab_gamut_bins derives 262, see there


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


# ---- the quantised ab space -----------------------------------------------------------------------

# Samples per edge of the RGB cube's faces: enough that the cell set no longer
# changes (every count from 257 to 2048 samples gives the same 262 cells).
_GAMUT_SAMPLES_PER_EDGE = 512


@functools.lru_cache(maxsize=None)
def _gamut_cells(grid: float) -> tuple:
    """The ab grid cells (integer multiples of `grid`) that the sRGB gamut reaches, sorted."""
    v = torch.linspace(0.0, 1.0, _GAMUT_SAMPLES_PER_EDGE, dtype=torch.float64)
    s, t = (x.reshape(-1) for x in torch.meshgrid(v, v, indexing="ij"))
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    # The cube's six faces: their image in Lab is the boundary of the gamut
    # solid, and every vertical line (fixed ab) through the solid meets its
    # boundary, so the faces reach every ab value the whole cube reaches.
    faces = [(zero, s, t), (one, s, t), (s, zero, t), (s, one, t), (s, t, zero), (s, t, one)]
    rgb = torch.cat([torch.stack(face) for face in faces], dim=1).view(3, -1, 1)  # 3 x P x 1: channels at dim -3
    ab = rgb_to_lab(rgb)[1:].view(2, -1)
    cells = torch.round(ab / grid).long()
    offset = int(cells.abs().max()) + 1
    keys = torch.unique((cells[0] + offset) * (2 * offset + 1) + (cells[1] + offset))  # sorted
    a_index, b_index = keys // (2 * offset + 1) - offset, keys % (2 * offset + 1) - offset
    return tuple(zip((a_index * grid).tolist(), (b_index * grid).tolist()))


def ab_gamut_bins(grid: float = 10.0) -> Tensor:
    """The in-gamut ab bin centres on a grid of spacing `grid` (Sec. 2.1:
    grid 10), Q x 2 float32, sorted by a then b. Derived, not copied: a
    centre is kept when some sRGB colour's ab, rounded to the nearest
    multiple of `grid`, falls on it (its grid x grid cell holds an sRGB
    colour), over a dense sampling of the continuous sRGB cube.

    This gives Q = 262 at grid 10, not the paper's 313. Other derivations
    give 261 (only the 256^3 8-bit colours: the cell at (20, -80) is
    reached only between 8-bit steps), 268 (cells [10i, 10i + 10) by
    flooring), 233 (grid points inside the convex hull of the gamut's ab
    projection) and 309 (the corners of every floor cell reached); none
    gives 313, whose bins must include ab values outside the sRGB gamut.
    Cached: computed once per process (about 0.5 s)."""
    return torch.tensor(_gamut_cells(float(grid)), dtype=torch.float32)


def _flat_pixels(ab: Tensor) -> Tensor:
    """N x 2 x H x W -> (N H W) x 2."""
    return ab.movedim(-3, -1).reshape(-1, 2)


def _squared_distances(pixels: Tensor, centres: Tensor) -> Tensor:
    """P x Q squared ab distances, computed exactly (not by the |x|^2 - 2xy + |y|^2
    expansion, whose cancellation would blur ties between neighbouring bins)."""
    return (pixels[:, None, :] - centres[None, :, :]).pow(2).sum(-1)


_PIXELS_PER_CHUNK = 1 << 14  # bounds the P x Q distance matrix at 16k x Q floats


def nearest_bin(ab: Tensor, centres: Tensor) -> Tensor:
    """N x 2 x H x W ab -> N x H x W long: the index of the nearest bin centre."""
    pixels = _flat_pixels(ab).to(centres.dtype)
    nearest = torch.cat([_squared_distances(chunk, centres).argmin(1) for chunk in pixels.split(_PIXELS_PER_CHUNK)])
    return nearest.view(*ab.shape[:-3], *ab.shape[-2:])


def soft_encode(ab: Tensor, centres: Tensor, neighbours: int = 5, sigma: float = 5.0) -> Tensor:
    """N x 2 x H x W ab -> N x Q x H x W soft targets Z (Sec. 2.1): each pixel's
    `neighbours` nearest bins weighted by a Gaussian of their distance,
    exp(-d^2 / 2 sigma^2), normalised to sum to 1; every other bin 0."""
    pixels = _flat_pixels(ab).to(centres.dtype)
    indices, weights = [], []
    for chunk in pixels.split(_PIXELS_PER_CHUNK):
        distances, nearest = _squared_distances(chunk, centres).topk(neighbours, dim=1, largest=False)
        # A softmax of -d^2 / 2 sigma^2: the Gaussian weights, normalised, and
        # stable however far a pixel lies from every bin.
        weights.append(torch.softmax(-distances / (2.0 * sigma ** 2), dim=1))
        indices.append(nearest)
    targets = torch.zeros(len(pixels), len(centres), device=ab.device, dtype=centres.dtype)
    targets.scatter_(1, torch.cat(indices), torch.cat(weights))
    return targets.view(*ab.shape[:-3], *ab.shape[-2:], len(centres)).movedim(-1, -3)


def empirical_bin_distribution(ab_batches: Union[Tensor, Iterable[Tensor]], centres: Tensor) -> Tensor:
    """p_q, the fraction of pixels whose nearest bin is q (Q floats summing to
    1), over one N x 2 x H x W ab tensor or an iterable of them."""
    if isinstance(ab_batches, Tensor):
        ab_batches = [ab_batches]
    counts = torch.zeros(len(centres), dtype=torch.float64, device=centres.device)
    for ab in ab_batches:
        nearest = nearest_bin(ab.to(centres.device), centres)
        counts += torch.bincount(nearest.flatten(), minlength=len(centres)).to(counts.dtype)
    if counts.sum() == 0:
        raise ValueError("empirical_bin_distribution: no pixels")
    return (counts / counts.sum()).to(centres.dtype)


def smooth_distribution(p: Tensor, centres: Tensor, sigma: float = 5.0) -> Tensor:
    """p~: the distribution p over the bins convolved with a Gaussian of std
    `sigma` in the ab plane (Sec. 2.1). Each bin's mass is spread over the
    in-gamut bins in proportion to exp(-d^2 / 2 sigma^2) (normalised per
    source bin), so no mass leaks out of the gamut and p~ sums to 1."""
    kernel = torch.exp(-_squared_distances(centres, centres) / (2.0 * sigma ** 2))  # symmetric, Q x Q
    spread = kernel / kernel.sum(dim=0, keepdim=True)  # column r: where bin r's mass goes
    return spread @ p


def rebalancing_weights(p: Tensor, centres: Tensor, lam: float = 0.5, sigma: float = 5.0) -> Tensor:
    """The class-rebalancing weights w (Eq. 3-4): w proportional to
    ((1 - lam) p~ + lam / Q)^-1 with p~ = `smooth_distribution(p)`, scaled so
    that their expectation under p~ is 1 (sum_q p~_q w_q = 1). lam = 1 gives
    every bin weight 1; lam = 0 weights each bin by 1 / p~ (the rare colours
    count as much as the common ones, the desaturated ab ~ 0 no more)."""
    smoothed = smooth_distribution(p, centres, sigma)
    weights = 1.0 / ((1.0 - lam) * smoothed + lam / len(p))
    return weights / (smoothed * weights).sum()


def annealed_mean(probs: Tensor, centres: Tensor, temperature: float = 0.38) -> Tensor:
    """The point estimate of ab from predicted bin probabilities Z, N x Q x H x W
    -> N x 2 x H x W (Sec. 2.2, Eq. 5): the mean of the centres under
    f_T(Z) = exp(log Z / T) / sum_q exp(log Z_q / T). T = 1 is the mean
    (desaturated), T -> 0 the mode (spatially inconsistent); the paper's
    T = 0.38 lies between."""
    log_probs = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    annealed = torch.softmax(log_probs / temperature, dim=-3)
    return torch.einsum("...qhw,qc->...chw", annealed, centres.to(probs.dtype))


def rebalanced_cross_entropy(logits: Tensor, soft_targets: Tensor, class_weights: Tensor) -> Tensor:
    """Eq. 2: per pixel -v(Z) sum_q Z_q log softmax(logits)_q, with
    v(Z) = w[argmax_q Z] the rebalancing weight of the pixel's most likely
    bin; the mean over pixels and images. logits and soft_targets are
    N x Q x H x W, class_weights Q."""
    log_probs = F.log_softmax(logits.float(), dim=-3)
    per_pixel = -(soft_targets.float() * log_probs).sum(dim=-3)
    pixel_weights = class_weights.float()[soft_targets.argmax(dim=-3)]
    return (pixel_weights * per_pixel).mean()


__all__ = [
    "PAPER_BIN_COUNT", "ab_gamut_bins", "annealed_mean", "empirical_bin_distribution",
    "gray_from_lightness", "lab_to_rgb", "linear_to_srgb", "nearest_bin", "rebalanced_cross_entropy",
    "rebalancing_weights", "rgb_to_lab", "smooth_distribution", "soft_encode", "srgb_to_linear",
]
