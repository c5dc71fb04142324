"""Losses of the momentum and siamese methods: pure functions of tensors."""

from __future__ import annotations

import math

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
    # In log space, with s = logit - log Z - log(m P_n): log h = -softplus(-s)
    # and log(1 - h) = -softplus(s), exact and finite for any logit. A floor,
    # log(h + eps), would scale a positive's gradient by h / (h + eps) and
    # starve the hard positives (h near 0: a feature far from its bank entry,
    # h ~ exp(logit) N / (m Z)); and exp(logit) itself overflows float32 past 88.
    shift = log_normaliser + math.log(noise_logits.shape[1] / num_data)
    log_h_pos = -F.softplus(shift - positive_logits)
    log_not_h_noise = -F.softplus(noise_logits - shift)
    return -(log_h_pos + log_not_h_noise.sum(dim=1)).mean()


def looc_masks(num_augmentations: int) -> tuple[Tensor, Tensor]:
    """Which of an image's keys k0..kn are positives and which negatives for
    its query, per embedding space (LooC, Xiao et al. 2021, Sec. 3.2): row 0
    is the all-invariant space Z0, where every key is a positive; row i is
    Zi, where only ki (the key sharing q's augmentation i) is a positive and
    the image's other keys are negatives. Both (n + 1) x (n + 1) bool."""
    size = num_augmentations + 1
    positive = torch.eye(size, dtype=torch.bool)
    positive[0] = True
    negative = ~positive
    negative[0] = False
    return positive, negative


def leave_one_out_info_nce(q: Tensor, image_keys: Tensor, queue: Tensor, positive: Tensor, negative: Tensor,
                           temperature: float) -> Tensor:
    """InfoNCE in one LooC space, one term per positive key: for a positive
    key k+ of the image, -log exp(q.k+/t) / (exp(q.k+/t) + sum over the
    image's negative keys and the queue of exp(q.k/t)), averaged over the
    positives and the batch. Other positives are not in the denominator (each
    positive pair is its own InfoNCE, as MoCo's Eq. 1 per key).

    `q` N x d, `image_keys` N x M x d (the image's keys k0..kn in this
    space), `queue` K x d, `positive` / `negative` M bools. With one positive
    and no image negatives this is `info_nce_loss`.
    """
    q = F.normalize(q, dim=1)
    own = torch.einsum("nd,nmd->nm", q, F.normalize(image_keys.detach(), dim=2)) / temperature
    others = q @ F.normalize(queue.detach(), dim=1).T / temperature
    negatives = torch.cat([own[:, negative.to(own.device)], others], dim=1)
    negative_lse = torch.logsumexp(negatives, dim=1, keepdim=True)
    positives = own[:, positive.to(own.device)]
    return (torch.logaddexp(positives, negative_lse) - positives).mean()


def looc_loss(queries: list[Tensor], keys: list[Tensor], queues: list[Tensor], temperature: float) -> Tensor:
    """LooC's objective: the mean over the n + 1 spaces of each space's
    leave-one-out InfoNCE. `queries[s]` N x d (q in space s), `keys[s]`
    N x (n + 1) x d (k0..kn in space s), `queues[s]` K x d. The paper sums
    the spaces' losses without saying how they are weighted (Sec. 3.2); we
    average them, so the loss's scale does not grow with n."""
    positive, negative = looc_masks(len(queries) - 1)
    terms = [leave_one_out_info_nce(q, k, queue, positive[s], negative[s], temperature)
             for s, (q, k, queue) in enumerate(zip(queries, keys, queues))]
    return torch.stack(terms).mean()
