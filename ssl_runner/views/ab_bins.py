"""Colorization's quantised ab output space (Zhang, Isola & Efros, ECCV 2016):
the in-gamut ab bins (derived here from the sRGB gamut), the nearest bin and
the soft encoding of ab values over the bins (Sec. 2.1), the empirical bin
distribution, and the annealed mean that turns predicted bin probabilities
into one ab value (Sec. 2.2). The class-rebalancing weights and the loss
built on these are in `ssl_runner/losses/colorization.py`.

ab tensors are N x 2 x H x W (channels at dim -3, any leading dims work).
"""

from __future__ import annotations

import functools
from typing import Iterable, Union

import torch
from torch import Tensor

from ssl_runner.views.lab import rgb_to_lab

PAPER_BIN_COUNT = 313  # the paper's Q (Sec. 2.1); ab_gamut_bins derives 262, see there

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


def squared_ab_distances(pixels: Tensor, centres: Tensor) -> Tensor:
    """P x Q squared ab distances, computed exactly (not by the |x|^2 - 2xy + |y|^2
    expansion, whose cancellation would blur ties between neighbouring bins)."""
    return (pixels[:, None, :] - centres[None, :, :]).pow(2).sum(-1)


_PIXELS_PER_CHUNK = 1 << 14  # bounds the P x Q distance matrix at 16k x Q floats


def nearest_bin(ab: Tensor, centres: Tensor) -> Tensor:
    """N x 2 x H x W ab -> N x H x W long: the index of the nearest bin centre."""
    pixels = _flat_pixels(ab).to(centres.dtype)
    nearest = torch.cat([squared_ab_distances(chunk, centres).argmin(1) for chunk in pixels.split(_PIXELS_PER_CHUNK)])
    return nearest.view(*ab.shape[:-3], *ab.shape[-2:])


def soft_encode(ab: Tensor, centres: Tensor, neighbours: int = 5, sigma: float = 5.0) -> Tensor:
    """N x 2 x H x W ab -> N x Q x H x W soft targets Z (Sec. 2.1): each pixel's
    `neighbours` nearest bins weighted by a Gaussian of their distance,
    exp(-d^2 / 2 sigma^2), normalised to sum to 1; every other bin 0."""
    pixels = _flat_pixels(ab).to(centres.dtype)
    indices, weights = [], []
    for chunk in pixels.split(_PIXELS_PER_CHUNK):
        distances, nearest = squared_ab_distances(chunk, centres).topk(neighbours, dim=1, largest=False)
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


def annealed_mean(probs: Tensor, centres: Tensor, temperature: float = 0.38) -> Tensor:
    """The point estimate of ab from predicted bin probabilities Z, N x Q x H x W
    -> N x 2 x H x W (Sec. 2.2, Eq. 5): the mean of the centres under
    f_T(Z) = exp(log Z / T) / sum_q exp(log Z_q / T). T = 1 is the mean
    (desaturated), T -> 0 the mode (spatially inconsistent); the paper's
    T = 0.38 lies between."""
    log_probs = torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    annealed = torch.softmax(log_probs / temperature, dim=-3)
    return torch.einsum("...qhw,qc->...chw", annealed, centres.to(probs.dtype))


__all__ = ["PAPER_BIN_COUNT", "ab_gamut_bins", "annealed_mean", "empirical_bin_distribution", "nearest_bin",
           "soft_encode", "squared_ab_distances"]
