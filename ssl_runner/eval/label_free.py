"""Label-free measures of a representation, pure functions of feature matrices:

- `rankme`: the effective rank of the embeddings (Garrido et al. 2023,
  "RankMe: Assessing the downstream performance of pretrained
  self-supervised representations by their rank", ICML, eq. 1); larger is
  better, and a collapsing method's falls towards 1;
- `alignment` and `uniformity`: Wang & Isola 2020 ("Understanding
  contrastive representation learning through alignment and uniformity on
  the hypersphere", ICML, Sec. 4.1 and their reference code), on
  L2-normalised features; smaller is better for both.

`LABEL_FREE_MEASURES` names them with the direction that is better (the
keys they have in the pretrain stage's summary, and what a sweep objective
on them should say).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LABEL_FREE_MEASURES = {"rankme": "maximize", "alignment": "minimize", "uniformity": "minimize"}


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """exp of the entropy of the normalised singular values of the N x D
    `embeddings`: p_k = sigma_k / ||sigma||_1 + eps, RankMe = exp(-sum_k p_k
    log p_k), the paper's normaliser (the L1 norm of the singular values, not
    their squares). Between 1 (rank one) and min(N, D) (all singular values
    equal). NaN when an embedding is not finite; 0 for the zero matrix (rank
    0: every feature collapsed to the origin). Computed in float64.

    The matrix is NOT mean-centred: the paper takes the singular values of
    the raw embeddings. (Centring would bound the rank by N - 1 and change
    what is measured: one library's effective rank centres, a known bug
    when N <= D.)"""
    z = embeddings.detach().to(torch.float64)
    if not bool(torch.isfinite(z).all()):
        return math.nan
    singular_values = torch.linalg.svdvals(z)
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def alignment(z1: Tensor, z2: Tensor, alpha: float = 2) -> float:
    """Mean ||f(x) - f(y)||^alpha over the positive pairs (row i of `z1` and
    row i of `z2`, L2-normalised here). In [0, 2^alpha]: 0 when the two views
    map to the same point, 4 (alpha 2) when to antipodes."""
    a = F.normalize(z1.detach().to(torch.float64), dim=1)
    b = F.normalize(z2.detach().to(torch.float64), dim=1)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z: Tensor, t: float = 2) -> float:
    """log of the mean of exp(-t ||f(x) - f(y)||^2) over the distinct pairs
    of rows of `z` (L2-normalised here; torch.pdist's pairs i < j, as in the
    paper's code). At most 0 (every point the same); at least
    -t (2 + 2 / (N - 1)) (the mean squared distance of N unit vectors is at
    most that); near -2t for many points spread evenly over a
    high-dimensional sphere."""
    x = F.normalize(z.detach().to(torch.float64), dim=1)
    return float(torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log())


__all__ = ["LABEL_FREE_MEASURES", "alignment", "rankme", "uniformity"]
