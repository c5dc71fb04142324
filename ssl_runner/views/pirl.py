"""PIRL's view maker (Misra & van der Maaten, CVPR 2020): an image view and a
jigsaw-transformed view of the same image (Sec. 3.3), the pair whose
representations the method pulls together.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from ssl_runner.views.jigsaw import JigsawPuzzles
from ssl_runner.views.recipe import ViewRecipe


class PIRLViews:
    """The method's views: [v_I, v_It], an image view from `image_recipe`
    (crop, flip, colour; its one view) and a jigsaw-transformed view of the
    same image from `puzzles` (its own crop, then nine shuffled tiles,
    N x 9 x 3 x t x t; the puzzle's labels dropped: PIRL predicts none)."""

    num_views = 2  # the image view and the tiles

    def __init__(self, image_recipe: ViewRecipe, puzzles: JigsawPuzzles) -> None:
        if image_recipe.num_views != 1:
            raise ValueError(f"PIRL's image branch takes one view per image, got a recipe of "
                             f"{image_recipe.num_views}")
        self.image_recipe, self.puzzles = image_recipe, puzzles

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> List[Tensor]:
        image = self.image_recipe.views(images, generator)[0]
        tiles, _ = self.puzzles.views(images, generator)
        return [image, tiles]


__all__ = ["PIRLViews"]
