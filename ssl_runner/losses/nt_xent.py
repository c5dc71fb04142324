"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.distributed import collectives


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float, gather: bool = True) -> Tensor:
    """NT-Xent over a batch of N pairs (Chen et al. 2020, Eq. 1 and Alg. 1).

    The 2N embeddings are L2-normalised; for each of them the other view of the
    same image is the positive and the remaining 2N-2 embeddings are the
    negatives. The loss is the mean over all 2N anchors, so it is symmetric in
    the two views.

    In a multi-process run (`gather`), N is the global batch (Sec. 2.2: the
    negatives come from every device): each rank scores its own anchors
    against the embeddings of all ranks, gathered with their gradients, and
    the mean of the ranks' losses equals the loss of one process holding the
    whole batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two N x d tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n_local = z1.shape[0]
    offset = 0
    if gather and collectives.world_size() > 1:
        z1, z2 = collectives.gather_with_grad(z1), collectives.gather_with_grad(z2)
        offset = collectives.rank() * n_local
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    # This rank's anchors: its slice of the first views, then of the second.
    local = torch.cat([torch.arange(offset, offset + n_local), torch.arange(n + offset, n + offset + n_local)])
    local = local.to(z.device)
    logits = z[local] @ z.T / temperature
    # An embedding is never its own negative: drop it from the softmax.
    logits[torch.arange(len(local), device=z.device), local] = float("-inf")
    positives = (local + n) % (2 * n)
    return F.cross_entropy(logits, positives)
