"""Colorization's view maker (Zhang, Isola & Efros, "Colorful Image
Colorization", ECCV 2016): the network's gray input and the ab target it
predicts, from one augmented crop. The colour space is `lab.py`, the
quantised ab bins `ab_bins.py`.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.lab import gray_from_lightness, rgb_to_lab
from ssl_runner.views.pixels import normalize, to_unit_float
from ssl_runner.views.recipe import ViewRecipe


def colorization_pair(rgb: Tensor, mean: Sequence[float], std: Sequence[float], target_size: int
                      ) -> tuple[Tensor, Tensor]:
    """RGB in [0, 1], N x 3 x H x W -> (the network's input, the ab target).

    The input is the image's lightness L alone, shown as the gray sRGB
    image (L, 0, 0) on 3 equal channels, normalised with the data set's
    `mean` and `std`. The paper's network takes L on one channel (centred
    at 50); here the backbone keeps its 3-channel stem, because the
    evaluation stages feed the same backbone colour images normalised with
    `mean` and `std`: a gray image through that normalisation keeps the
    stem's input statistics close to theirs. The target is the ab channels
    averaged over area to target_size x target_size (the resolution the
    decoder predicts at, a quarter of the input's, Sec. 2)."""
    lab = rgb_to_lab(rgb.clamp(0.0, 1.0))
    inputs = normalize(gray_from_lightness(lab[:, :1]), mean, std)
    return inputs, downsampled_ab(lab, target_size)


def downsampled_ab(lab: Tensor, target_size: int) -> Tensor:
    """N x 3 x H x W Lab -> its ab channels averaged over area to target_size x target_size."""
    return F.adaptive_avg_pool2d(lab[:, 1:], target_size)


class ColorizationViews:
    """The method's views: `recipe`'s augmentations (crop and flip) without
    its normalisation, then `colorization_pair`; a view list [input
    N x 3 x size x size, ab target N x 2 x t x t] (made in the loaders'
    workers or batched on the device alike)."""

    num_views = 2  # the gray input and its ab target

    def __init__(self, recipe: ViewRecipe, mean: Sequence[float], std: Sequence[float], target_size: int) -> None:
        self.recipe = recipe
        self.mean, self.std = list(mean), list(std)
        self.target_size = target_size

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> List[Tensor]:
        """One augmented image gives both views (the input and its target)."""
        images = to_unit_float(images)
        n, _, height, width = images.shape
        params = self.recipe.sample(n, height, width, images.device, generator)
        # In float32 even under mixed precision: a bf16 colour-matrix product
        # (0.4 % precision) would move a = 500 (fx - fy) by up to about a unit.
        with torch.autocast(images.device.type, enabled=False):
            for augmentation in self.recipe.augmentations:  # unnormalised: normalised after the Lab conversion
                images = augmentation.apply(images, params[augmentation.name])
            return list(colorization_pair(images, self.mean, self.std, self.target_size))


__all__ = ["ColorizationViews", "colorization_pair", "downsampled_ab"]
