"""The Jigsaw pretext task's view maker (Noroozi & Favaro, ECCV 2016,
"Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles").

`JigsawTiles` turns a batch of images into puzzles: each image is resized,
split into a grid of cells, a smaller tile is cut from each cell at a random
position, the tiles are reordered by a permutation drawn from the set
(`jigsaw_permutations.py`), and the label is that permutation's index. Like
the augmentations, its random parameters are sampled explicitly (`sample`)
and then applied (`apply`, a pure function), vectorised over the batch, on
the device of the images. `JigsawPuzzles` is the view maker: a recipe's crop
and flip, then the puzzle (Jigsaw's inputs, and PIRL's jigsaw branch).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.color import grayscale
from ssl_runner.views.pixels import normalize, to_unit_float
from ssl_runner.views.protocol import Device
from ssl_runner.views.recipe import ViewRecipe

# The presets of `JigsawTiles.for_image_side`: the side images are resized to,
# the side of the tiles cut from its 3 x 3 grid of cells, and the amplitude
# of the per-channel spatial shift, all in pixels of the resized image.
# Sec. 3: a 225-px window in 75-px cells, a 64-px tile from each (gaps of
# 0 to 22 px, 11 on average); the shortcut ablation (Table 5): channels
# shifted by 0, 1 or 2 px.
PAPER_GEOMETRY = {"image_size": 225, "tile_size": 64, "channel_jitter": 2}
# The paper's geometry scaled by 64 / 225 for 32-px images upsampled twice:
# 21-px cells (the 64th pixel row and column are left out), 18-px tiles (the
# paper's tile / cell ratio, 0.86), gaps of 0 to 6 px, 3 on average (4.7% of
# the image, the paper's 4.9%), channels shifted by up to 1 px (2 x 64 / 225).
CIFAR_GEOMETRY = {"image_size": 64, "tile_size": 18, "channel_jitter": 1}
# Images at least this large get the paper's geometry, smaller ones CIFAR's.
PAPER_GEOMETRY_MIN_SIDE = 96
# How tiles are normalised (`method.tile_normalization` of jigsaw and pirl):
# "per_tile", each channel of each tile standardised on its own
# (`JigsawTiles(normalize_tiles=True)`); "dataset", the data set's mean and
# std (`JigsawPuzzles(recipe, tiles, mean, std)`).
TILE_NORMALIZATIONS = ("per_tile", "dataset")


def standardize_tiles(tiles: Tensor, eps: float = 1e-6) -> Tensor:
    """Each channel of each tile (the last two dimensions its pixels) to mean 0
    and standard deviation 1 (the paper's "Normalization", Table 5). `eps`,
    added to the variance, keeps a flat tile at 0: a standard deviation of
    1e-3, a quarter of a uint8 step, is where amplification stops."""
    variance, mean = torch.var_mean(tiles, dim=(-2, -1), keepdim=True, correction=0)
    return (tiles - mean) * torch.rsqrt(variance + eps)


class JigsawTiles:
    """Jigsaw puzzles from a batch of images: uint8 or [0, 1] float
    N x 3 x H x W in, float tiles N x T x 3 x tile_size x tile_size and long
    labels N out, T the number of tiles of the permutation set (9: 3 x 3).

    The images (cropped at random by the caller) are resized to image_size x
    image_size and split into a grid of cells of image_size // grid pixels,
    from the top left corner (the remaining pixels, if any, are left out).
    Per image (Sec. 3 and the shortcut ablation, Table 5):

    - a tile of tile_size pixels is cut from each cell at a uniformly random
      offset, so neighbouring tiles are 0 to 2 (cell - tile) pixels apart,
      cell - tile on average: the random gap hides edge continuity;
    - the tiles are reordered by permutation `label`, drawn uniformly from
      the set: slot j shows the tile of cell permutations[label, j] (cells
      numbered row by row), so `tiles[:, permutations[label]] = slots`
      puts them back;
    - against chromatic aberration, a grayscale_p share of the images becomes
      grayscale (the paper's 30%), and in the others each channel of each
      tile is shifted spatially by up to `channel_jitter` pixels each way
      (the paper's 0, 1 or 2 pixels): channel c of a tile is read shift[c]
      pixels further down and right within the tile, its last rows or columns
      repeated, so no tile takes pixels from outside its own crop;
    - with `normalize_tiles`, each channel of each tile is standardised on its
      own, so that low-level statistics shared by neighbours do not give
      their positions away.

    `sample` draws the parameters, `apply` makes the tiles from them, and
    calling the object does both.
    """

    def __init__(self, permutations: Tensor, image_size: int, tile_size: int, grayscale_p: float = 0.3,
                 channel_jitter: int = 2, normalize_tiles: bool = True) -> None:
        permutations = torch.as_tensor(permutations).detach().to("cpu", torch.long)
        if permutations.ndim != 2 or len(permutations) < 2:
            raise ValueError(f"permutations must be a P x T tensor with P >= 2, got shape {tuple(permutations.shape)}")
        num_tiles = permutations.shape[1]
        grid = math.isqrt(num_tiles)
        if grid < 2 or grid * grid != num_tiles:
            raise ValueError(f"the tiles must fill a square grid of at least 2 x 2, got {num_tiles} per permutation")
        if not bool((permutations.sort(dim=1).values == torch.arange(num_tiles)).all()):
            raise ValueError(f"every row of permutations must be a permutation of 0..{num_tiles - 1}")
        cell_size = image_size // grid
        if not 1 <= tile_size <= cell_size:
            raise ValueError(f"tile_size must be between 1 and the cell size ({image_size} px in a {grid} x {grid} "
                             f"grid: {cell_size} px), got {tile_size}")
        if not 0 <= channel_jitter < tile_size:
            raise ValueError(f"channel_jitter must be between 0 and tile_size - 1, got {channel_jitter}")
        if not 0.0 <= grayscale_p <= 1.0:
            raise ValueError(f"grayscale_p must be a probability, got {grayscale_p}")
        self.permutations = permutations
        self.num_tiles = num_tiles
        self.grid = grid
        self.image_size = image_size
        self.cell_size = cell_size
        self.tile_size = tile_size
        self.grayscale_p = grayscale_p
        self.channel_jitter = int(channel_jitter)
        self.normalize_tiles = normalize_tiles
        cell = torch.arange(num_tiles)
        # (row, column) of each cell's top left pixel, cells numbered row by row.
        self.cell_corners = torch.stack([cell // grid, cell % grid], dim=1) * cell_size

    @classmethod
    def for_image_side(cls, permutations: Tensor, side: int, **overrides) -> JigsawTiles:
        """The paper's geometry (`PAPER_GEOMETRY`) for images of `side` >= 96
        pixels (resized to 225), CIFAR's (`CIFAR_GEOMETRY`) for smaller ones
        (32 px resized to 64); keyword arguments override either."""
        geometry = PAPER_GEOMETRY if side >= PAPER_GEOMETRY_MIN_SIDE else CIFAR_GEOMETRY
        return cls(permutations, **{**geometry, **overrides})

    @property
    def num_permutations(self) -> int:
        """The number of classes of the puzzle task."""
        return len(self.permutations)

    def sample(self, n: int, device: Device = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Parameters of n puzzles, on `device` (the generator's):

        - "permutation": long N, the index into the permutation set (the label);
        - "offset": long N x T x 2, the (row, column) of each tile within its
          cell, cells in grid order, each uniform on 0..cell_size - tile_size;
        - "grayscale": bool N, True with probability grayscale_p;
        - "channel_shift": long N x T x 3 x 2, the (row, column) shift of each
          channel of each tile, uniform on -channel_jitter..channel_jitter,
          0 for grayscale images (the paper jitters colour images only).
        """
        permutation = torch.randint(0, self.num_permutations, (n,), device=device, generator=generator)
        offset = torch.randint(0, self.cell_size - self.tile_size + 1, (n, self.num_tiles, 2), device=device,
                               generator=generator)
        gray = torch.rand(n, device=device, generator=generator) < self.grayscale_p
        jitter = self.channel_jitter
        shift = torch.randint(-jitter, jitter + 1, (n, self.num_tiles, 3, 2), device=device, generator=generator)
        shift = shift.masked_fill(gray.view(n, 1, 1, 1), 0)
        return {"permutation": permutation, "offset": offset, "grayscale": gray, "channel_shift": shift}

    def resize(self, images: Tensor) -> Tensor:
        """uint8 or [0, 1] float N x 3 x H x W -> float N x 3 x image_size x
        image_size: bilinear, antialiased where it shrinks, untouched if the
        images have that size already."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Jigsaw tiles are cut from N x 3 x H x W images, got shape {tuple(images.shape)}")
        images = to_unit_float(images)
        size = self.image_size
        if images.shape[-2:] == (size, size):
            return images
        shrinking = images.shape[-2] > size or images.shape[-1] > size
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)

    def _cut(self, images: Tensor, params: dict[str, Tensor], cells: Tensor) -> Tensor:
        """Tile j of image i cut from cell cells[i, j] with that cell's offset
        and channel shifts, grayscale applied, not standardised."""
        images = self.resize(images)
        n, channels, device, t = len(images), images.shape[1], images.device, self.tile_size
        cells = cells.to(device)
        corner = self.cell_corners.to(device)[cells] + params["offset"].to(device).gather(
            1, cells.unsqueeze(-1).expand(-1, -1, 2))  # n x T x 2
        shift = params["channel_shift"].to(device).gather(
            1, cells.view(n, -1, 1, 1).expand(-1, -1, channels, 2))  # n x T x 3 x 2
        steps = torch.arange(t, device=device)
        # Pixel k of a shifted channel is pixel k + shift of the tile, clamped to the tile.
        within = (steps + shift.unsqueeze(-1)).clamp_(0, t - 1)  # n x T x 3 x 2 x t
        coordinates = corner[:, :, None, :, None] + within
        rows = coordinates[..., 0, :].unsqueeze(-1)  # n x T x 3 x t x 1
        columns = coordinates[..., 1, :].unsqueeze(-2)  # n x T x 3 x 1 x t
        image_index = torch.arange(n, device=device).view(n, 1, 1, 1, 1)
        channel_index = torch.arange(channels, device=device).view(1, 1, channels, 1, 1)
        tiles = images[image_index, channel_index, rows, columns]  # n x T x 3 x t x t
        gray = params["grayscale"].to(device).view(n, 1, 1, 1, 1)
        return torch.where(gray, grayscale(tiles).expand_as(tiles), tiles)

    def grid_tiles(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """The tiles in grid order (cell 0 first), before the permutation and
        the standardisation: N x T x 3 x tile_size x tile_size."""
        cells = torch.arange(self.num_tiles, device=images.device).expand(len(images), -1)
        return self._cut(images, params, cells)

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        """The puzzles that `params` describe, a pure function of its
        arguments: slot j of image i holds the tile of cell
        permutations[params["permutation"][i], j], standardised if
        `normalize_tiles`. N x T x 3 x tile_size x tile_size, float."""
        # The permutation chooses which cell each slot is cut from, so the
        # tiles are cut once, already in puzzle order.
        cells = self.permutations.to(images.device)[params["permutation"].to(images.device)]
        tiles = self._cut(images, params, cells)
        return standardize_tiles(tiles) if self.normalize_tiles else tiles

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(tiles N x T x 3 x tile_size x tile_size, labels N long) for a batch."""
        params = self.sample(len(images), images.device, generator)
        return self.apply(images, params), params["permutation"]


class JigsawPuzzles:
    """The method's views: `recipe`'s crop and flip, then the puzzle; a view
    list [tiles N x 9 x 3 x t x t, labels N] (so puzzles are made in the
    loaders' workers or batched on the device alike)."""

    num_views = 2  # the tiles and their labels

    def __init__(self, recipe: ViewRecipe, tiles: JigsawTiles, mean: Optional[List[float]] = None,
                 std: Optional[List[float]] = None) -> None:
        """`mean` and `std`: normalise the tiles with them (the tiles must then
        not be standardised on their own)."""
        self.recipe, self.tiles = recipe, tiles
        self.mean, self.std = mean, std

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> List[Tensor]:
        images = to_unit_float(images)
        n, _, height, width = images.shape
        params = self.recipe.sample(n, height, width, images.device, generator)
        for augmentation in self.recipe.augmentations:  # unnormalised: each tile is normalised on its own
            images = augmentation.apply(images, params[augmentation.name])
        tiles, labels = self.tiles(images, generator)
        if self.mean is not None:
            tiles = normalize(tiles.flatten(0, 1), self.mean, self.std).view_as(tiles)
        return [tiles, labels]


__all__ = ["CIFAR_GEOMETRY", "PAPER_GEOMETRY", "TILE_NORMALIZATIONS", "JigsawPuzzles", "JigsawTiles",
           "standardize_tiles"]
