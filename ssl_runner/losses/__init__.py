"""Losses: pure functions of tensors, each tested against its paper's formula."""

from ssl_runner.losses.nt_xent import nt_xent_loss

__all__ = ["nt_xent_loss"]
