"""Colorization's class-rebalanced loss (Zhang, Isola & Efros, ECCV 2016):
the rebalancing weights from the smoothed ab-bin distribution (Sec. 2.1,
Eq. 3-4) and the rebalanced multinomial cross-entropy (Eq. 2). The bins
themselves are in `ssl_runner/views/ab_bins.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.ab_bins import squared_ab_distances


def smooth_distribution(p: Tensor, centres: Tensor, sigma: float = 5.0) -> Tensor:
    """p~: the distribution p over the bins convolved with a Gaussian of std
    `sigma` in the ab plane (Sec. 2.1). Each bin's mass is spread over the
    in-gamut bins in proportion to exp(-d^2 / 2 sigma^2) (normalised per
    source bin), so no mass leaks out of the gamut and p~ sums to 1."""
    kernel = torch.exp(-squared_ab_distances(centres, centres) / (2.0 * sigma ** 2))  # symmetric, Q x Q
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


def rebalanced_cross_entropy(logits: Tensor, soft_targets: Tensor, class_weights: Tensor) -> Tensor:
    """Eq. 2: per pixel -v(Z) sum_q Z_q log softmax(logits)_q, with
    v(Z) = w[argmax_q Z] the rebalancing weight of the pixel's most likely
    bin; the mean over pixels and images. logits and soft_targets are
    N x Q x H x W, class_weights Q."""
    log_probs = F.log_softmax(logits.float(), dim=-3)
    per_pixel = -(soft_targets.float() * log_probs).sum(dim=-3)
    pixel_weights = class_weights.float()[soft_targets.argmax(dim=-3)]
    return (pixel_weights * per_pixel).mean()


__all__ = ["rebalanced_cross_entropy", "rebalancing_weights", "smooth_distribution"]
