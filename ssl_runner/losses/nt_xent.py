"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent over a batch of N pairs (Chen et al. 2020, Eq. 1 and Alg. 1).

    The 2N embeddings are L2-normalised; for each of them the other view of the
    same image is the positive and the remaining 2N-2 embeddings are the
    negatives. The loss is the mean over all 2N anchors, so it is symmetric in
    the two views.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two N x d tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    # An embedding is never its own negative: drop the diagonal from the softmax.
    logits.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)
