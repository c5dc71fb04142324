"""Losses of the counting and PIRL pretext tasks: pure functions of tensors."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def counting_loss(counts_downsampled: Tensor, counts_other: Tensor, counts_tiles_sum: Tensor,
                  margin: float = 10.0) -> Tensor:
    """Noroozi, Pirsiavash & Favaro's counting loss (ICCV 2017, Eq. 5): the
    features ("counts") of the downsampled image x should equal the sum of
    the counts of its four tiles, and those of another image y should not,
    by a squared distance of at least `margin` (the contrastive term that
    rules out the trivial solution phi = 0):

        ||phi(D x) - t||^2 + max(0, M - ||phi(D y) - t||^2),  t = sum_j phi(T_j x),

    averaged over the batch. All arguments N x d (`counts_other` row i is
    phi(D y) for the y paired with x_i)."""
    own = (counts_downsampled - counts_tiles_sum).pow(2).sum(dim=1)
    other = (counts_other - counts_tiles_sum).pow(2).sum(dim=1)
    return (own + F.relu(margin - other)).mean()


def memory_bank_nce(embeddings: Tensor, bank: Tensor, indices: Tensor, temperature: float,
                    negatives: Optional[Tensor] = None) -> Tensor:
    """The contrastive term against a memory bank (PIRL, Misra & van der
    Maaten 2020, Eq. 4-5, as a softmax; NPID's exact non-parametric softmax,
    Wu et al. 2018, Eq. 2, with the whole bank): embedding i should match its own
    image's memory bank[indices[i]] rather than the other entries. With
    `negatives` None the negatives are every other row of the bank (the
    exact softmax, affordable for CIFAR's 50,000 rows); else `negatives`
    (N x K row numbers) are each embedding's negatives. Embeddings and bank
    are taken as L2-normalised; the bank gets no gradient."""
    bank = bank.detach()
    if negatives is None:
        return F.cross_entropy(embeddings @ bank.T / temperature, indices)
    positive = (embeddings * bank[indices]).sum(dim=1, keepdim=True)
    noise = torch.einsum("nkd,nd->nk", bank[negatives], embeddings)
    logits = torch.cat([positive, noise], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(embeddings), dtype=torch.long, device=embeddings.device))


def pirl_loss(image_embeddings: Tensor, jigsaw_embeddings: Tensor, bank: Tensor, indices: Tensor,
              temperature: float, jigsaw_weight: float = 0.5,
              negatives: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """PIRL's loss (Eq. 6): lambda NCE(m_I, g(v_It)) + (1 - lambda) NCE(m_I, f(v_I)),
    with m_I the memory bank's entry of image I, g(v_It) the jigsaw branch's
    embedding and f(v_I) the image branch's; lambda = `jigsaw_weight` (the
    paper: 0.5). Returns (total, jigsaw term, image term)."""
    jigsaw_term = memory_bank_nce(jigsaw_embeddings, bank, indices, temperature, negatives)
    image_term = memory_bank_nce(image_embeddings, bank, indices, temperature, negatives)
    return jigsaw_weight * jigsaw_term + (1.0 - jigsaw_weight) * image_term, jigsaw_term, image_term


__all__ = ["counting_loss", "memory_bank_nce", "pirl_loss"]
