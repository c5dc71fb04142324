"""The view-maker protocol: what the data loaders and `BaseMethod` rely on.

Every method's inputs come from one object that follows it: a `ViewRecipe`
(SimCLR-style views), or a pretext task's maker (jigsaw tiles and their
labels, patch pairs, colorization inputs and targets, LooC's leave-one-out
views, PIRL's image and tiles). The maker, not the method, says how many
tensors a batch becomes, so a loader can carry them without knowing the method.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

# Where sampled parameters are made: a device, its name, or None (the default device).
Device = torch.device | str | None


@runtime_checkable
class ViewMaker(Protocol):
    """Something that makes a method's inputs from a uint8 batch."""

    # The length of the list `views` returns (views, and labels where a
    # pretext task makes them: jigsaw's [tiles, labels] is 2).
    num_views: int

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """`num_views` tensors made from uint8 (or [0, 1] float) N x 3 x H x W
        `images`, on their device; random draws from `generator` (on that
        device) or torch's global generator. Works for N = 1 (DataLoader
        workers) and whole batches (after the transfer to the device) alike."""
        ...


__all__ = ["Device", "ViewMaker"]
