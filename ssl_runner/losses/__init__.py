"""Losses: pure functions of tensors, each tested against its paper's formula."""

from ssl_runner.losses.adversarial import discriminator_loss, discriminator_top1, generator_adversarial_loss
from ssl_runner.losses.colorization import rebalanced_cross_entropy, rebalancing_weights, smooth_distribution
from ssl_runner.losses.contrastive import (
    info_nce_loss,
    leave_one_out_info_nce,
    looc_loss,
    looc_masks,
    nce_loss,
    negative_cosine_loss,
    normalized_mse_loss,
)
from ssl_runner.losses.inpainting import masked_l2_loss
from ssl_runner.losses.nt_xent import nt_xent_loss
from ssl_runner.losses.pretext import counting_loss, memory_bank_nce, pirl_loss

__all__ = ["nt_xent_loss", "info_nce_loss", "negative_cosine_loss", "normalized_mse_loss", "nce_loss",
           "looc_masks", "leave_one_out_info_nce", "looc_loss", "counting_loss", "memory_bank_nce", "pirl_loss",
           "masked_l2_loss", "rebalanced_cross_entropy", "rebalancing_weights", "smooth_distribution",
           "discriminator_loss", "discriminator_top1", "generator_adversarial_loss"]
