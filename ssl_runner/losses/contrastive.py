"""Losses of the momentum and siamese methods: pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (He et al. 2020, Eq. 1 and Alg. 1): for each query the
    positive is its own key (logit index 0) and the negatives are the queue.

    `q` and `k` are N x d, `queue` K x d; all are L2-normalised here. The key
    and the queue get no gradient (keys come from the momentum encoder).
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ F.normalize(queue.detach(), dim=1).T
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def negative_cosine_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, sg(z)) = -cos(p, z), averaged over the batch (Chen & He
    2021, Eq. 1 and 3): the stop-gradient on z is the point of the method."""
    return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1).mean()


def normalized_mse_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's loss ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z) (Grill et al. 2020,
    Eq. 2), against the target projection z with no gradient."""
    return (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1)).mean()


def nce_loss(positive_logits: Tensor, noise_logits: Tensor, log_normaliser: float, num_data: int) -> Tensor:
    """NPID's noise-contrastive estimation of the instance softmax (Wu et al.
    2018, Eq. 5-7).

    `positive_logits` (N) and `noise_logits` (N x m) are v.f / tau for the
    sample's own memory entry and for m entries drawn uniformly as noise.
    P(i|f) = exp(logit) / Z with Z = exp(`log_normaliser`); the noise
    distribution is uniform, P_n = 1 / `num_data`; h = P / (P + m P_n). The
    loss is -log h(positive) - sum over noise of log(1 - h(noise)), averaged
    over the batch.
    """
    m = noise_logits.shape[1]
    noise_mass = m / num_data
    p_pos = torch.exp(positive_logits - log_normaliser)
    p_noise = torch.exp(noise_logits - log_normaliser)
    eps = 1e-7
    log_h_pos = torch.log(p_pos / (p_pos + noise_mass) + eps)
    log_not_h_noise = torch.log(noise_mass / (p_noise + noise_mass) + eps)
    return -(log_h_pos + log_not_h_noise.sum(dim=1)).mean()
