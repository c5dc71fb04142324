"""Views of image files of any size, made a batch at a time in a DataLoader
worker (`data.views_on=cpu` with the standard view recipe): the one step
that depends on each file's size, the random resized crop, is taken per
image from the file at the size the crop needs; everything after it runs
batched on uint8 crops of the views' size.

Per image this does the least a crop needs:

- the crop's box is drawn from the file's header size, before decoding;
- a JPEG is decoded at the smallest of 1, 1/2, 1/4, 1/8 of its size that
  still holds every view's box at the views' resolution (PIL's `draft`, the
  decoder's own DCT scaling: a 400-px photo cropped to 32 px decodes at 1/8);
- the box is cut and resized to size x size in uint8 by PIL (its bilinear
  filter widens when shrinking, so a large box is averaged, not aliased, as
  `roi_align`'s adaptive sampling does on the batched path); no full-size
  float image is ever made.

Then flip, colour jitter, grayscale, blur, ... and normalisation run on the
whole batch (`ViewRecipe.views_of_crops`), as `views_on=device` runs them.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ssl_runner.errors import UserError
from ssl_runner.views.recipe import ViewRecipe

# JPEG decoders scale by 1/1, 1/2, 1/4 or 1/8 while decoding (the DCT's sizes).
JPEG_SCALES = (8, 4, 2, 1)


def unreadable(path: str, err: Exception) -> UserError:
    return UserError(
        f"could not decode the image file {path} ({type(err).__name__}: {err}). "
        "The file is corrupt or not an image: remove or replace it and run again."
    )


def reduction(boxes: Tensor, size: int) -> int:
    """The largest JPEG scale-down (8, 4, 2 or 1) that keeps every box at least
    `size` pixels on each side."""
    smallest_side = float(torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).min())
    return next((k for k in JPEG_SCALES if smallest_side / k >= size), 1)


def crops_of_file(path: str, recipe: ViewRecipe, num_views: int, generator: torch.Generator) -> List[Tensor]:
    """`num_views` random resized crops of one file, uint8 3 x size x size each."""
    crop = recipe.augmentations[0]
    size = recipe.size
    try:
        with Image.open(path) as image:
            width, height = image.size
            boxes = torch.cat([crop.sample(1, height, width, generator=generator)["box"] for _ in range(num_views)])
            if image.format == "JPEG":
                k = reduction(boxes, size)
                image.draft("RGB", (math.ceil(width / k), math.ceil(height / k)))
            decoded = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise unreadable(path, err) from None
    sx, sy = decoded.width / width, decoded.height / height
    crops = []
    for x0, y0, x1, y1 in boxes.tolist():
        cut = decoded.resize((size, size), Image.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        crops.append(torch.from_numpy(np.asarray(cut).copy()).permute(2, 0, 1))
    return crops


def views_of_files(paths: Sequence[str], recipe: ViewRecipe, generator: torch.Generator) -> Tuple[Tensor, ...]:
    """`recipe.num_views` views of each file, one N x 3 x size x size tensor per view."""
    per_file = [crops_of_file(p, recipe, recipe.num_views, generator) for p in paths]
    return tuple(recipe.views_of_crops(torch.stack([crops[v] for crops in per_file]), generator)
                 for v in range(recipe.num_views))


__all__ = ["crops_of_file", "reduction", "views_of_files"]
