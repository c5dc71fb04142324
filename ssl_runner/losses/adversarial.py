"""The GAN losses of the context encoder's adversarial term (Pathak et al.,
CVPR 2016, Eq. 2; Goodfellow et al. 2014): pure functions of the
discriminator's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """-log D(G(x)) averaged over the images: the non-saturating generator
    loss (Goodfellow et al. 2014), the usual form of Eq. 2's min over G."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(x) - log(1 - D(G(x))), each averaged over its images: the
    discriminator's side of Eq. 2 (the standard GAN loss), real images label
    1, completed ones 0."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def discriminator_top1(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The percentage of images the discriminator labels right (real > 0,
    completed < 0), over both halves of its batch."""
    correct = (real_logits > 0).float().sum() + (fake_logits < 0).float().sum()
    return correct / (2 * len(real_logits)) * 100


__all__ = ["discriminator_loss", "discriminator_top1", "generator_adversarial_loss"]
