"""LooC's leave-one-out views (Xiao et al., ICLR 2021, Sec. 3.1).

For every image: a query view q and a key k0 with every augmentation
parameter drawn independently, and for each atomic augmentation i a key ki
that copies q's parameters of augmentation i and draws all the others afresh.
So q and ki share exactly one augmentation, and a space that must tell ki
from the other keys has to be sensitive to it. Crop and flip are never
atomic augmentations here: they are drawn afresh for every view.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from ssl_runner.views.pixels import to_unit_float
from ssl_runner.views.protocol import Device
from ssl_runner.views.recipe import ViewParams, ViewRecipe

# LooC's atomic augmentations, each the ViewRecipe parameters it copies.
# Colour is jitter and grayscale together: both change colour only (the
# paper's "color" covers jittering and its grayscale variant). Texture is
# left out: the paper's texture augmentation needs a texture-synthesis model
# that has no faithful 32-pixel form.
ATOMIC_AUGMENTATIONS: Mapping[str, Sequence[str]] = {
    "color": ("color", "grayscale"),
    "rotation": ("rotation",),
}


class LeaveOneOutViews:
    """Views [q, k0, k1, ..., kn] of a uint8 (or [0, 1] float) batch, one per
    atomic augmentation in `augmentations` after q and k0; batched on the
    images' device, or per image (N = 1) in DataLoader workers.

    A view maker (`protocol.ViewMaker`) with `num_views` = n + 2, so the
    data loaders and `BaseMethod.make_views` use it as any other."""

    def __init__(self, recipe: ViewRecipe, augmentations: Sequence[str]) -> None:
        unknown = [a for a in augmentations if a not in ATOMIC_AUGMENTATIONS]
        if unknown or not augmentations or len(set(augmentations)) != len(augmentations):
            raise ValueError(f"LooC augmentations must be distinct names from {sorted(ATOMIC_AUGMENTATIONS)}, "
                             f"got {list(augmentations)}")
        for name in augmentations:
            if not any(p in recipe.names for p in ATOMIC_AUGMENTATIONS[name]):
                raise ValueError(f"LooC augmentation '{name}' is not in the view recipe ({recipe.names}); "
                                 "give it a non-zero probability in views")
        self.recipe = recipe
        self.augmentations = list(augmentations)
        self.size = recipe.size

    @property
    def num_views(self) -> int:
        """q, k0, and one key per atomic augmentation."""
        return len(self.augmentations) + 2

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> list[ViewParams]:
        """Parameters of q, k0, k1..kn: ki is a fresh draw with q's parameters
        of augmentation i copied in."""
        query = self.recipe.sample(n, height, width, device, generator)
        params = [query, self.recipe.sample(n, height, width, device, generator)]
        for name in self.augmentations:
            key = self.recipe.sample(n, height, width, device, generator)
            for part in ATOMIC_AUGMENTATIONS[name]:
                if part in query:
                    key[part] = {k: v.clone() for k, v in query[part].items()}
            params.append(key)
        return params

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        images = to_unit_float(images)
        n, _, height, width = images.shape
        return [self.recipe.apply(images, p) for p in self.sample(n, height, width, images.device, generator)]


__all__ = ["ATOMIC_AUGMENTATIONS", "LeaveOneOutViews"]
