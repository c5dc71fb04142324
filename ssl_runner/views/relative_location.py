"""Context prediction's patch pairs (Doersch, Gupta & Efros, ICCV 2015).

The pretext task: given a patch of an image and one of its eight neighbours
in a 3 x 3 grid of patches, predict which neighbour it is (Sec. 3, Fig. 2).
This module makes the pairs and their labels; the network and the loss
belong to the method. As in the augmentations, the parameters are sampled
explicitly (`sample`), then applied (`apply`, a pure function of the images
and the parameters), vectorised over the batch on the images' device.

`RelativeLocationPairs` makes patches in float32 [0, 1] pixel units; the
view maker `PatchPairs` normalises them with the data set's mean and std
(rather than the paper's per-patch mean subtraction). The chromatic guards
are in `chromatic_guards.py`.
"""

from __future__ import annotations

from typing import List, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.chromatic_guards import CHROMATIC_GUARDS, drop_channels, project_out_green_magenta
from ssl_runner.views.pixels import normalize, to_unit_float
from ssl_runner.views.protocol import Device

# Label k -> (row offset, column offset) of the neighbour from the centre
# patch, in grid cells, in raster order (the paper's Fig. 2):
#     0 1 2
#     3 . 4
#     5 6 7
# Rows grow downwards and columns rightwards, as tensor indices do.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1),
    (0, -1), (0, 1),
    (1, -1), (1, 0), (1, 1),
)
NUM_LOCATIONS = len(NEIGHBOUR_OFFSETS)

# Geometry presets: name -> RelativeLocationPairs keyword arguments.
# The paper (Sec. 3): 96-px patches, a 48-px gap (half a patch), jitter up to
# 7 px, in images resized to 150K-450K pixels (a side of roughly 390-670 px),
# so the 3 x 3 layout (3 * 96 + 2 * 48 + 2 * 7 = 398 px) spans most of the image.
SCALES: Mapping[str, Mapping[str, int]] = {
    # CIFAR's 32-px images hold a layout with the paper's gap of half a patch
    # only if each patch covers about 7 CIFAR pixels (4 p + 2 j <= 32). They are
    # upsampled 3x, exactly, so that the patches (22 px) are large enough for a
    # ResNet to downsample three times and the jitter (3 px, one CIFAR pixel)
    # and gap (11 px, 3.7 CIFAR pixels) can be finer than a CIFAR pixel. The
    # layout takes 94 of the 96 px: CIFAR objects fill the frame. Two 22-px
    # patches cost fewer pixels than two 32-px SimCLR views.
    "cifar": {"image_size": 96, "patch_size": 22, "gap": 11, "jitter": 3},
    # CIFAR upsampled 2x (or a run at data.image_size=64, whose evaluation
    # then sees images at the scale the towers were trained at): 14-px
    # patches (7 CIFAR pixels, as "cifar"), the paper's gap of half a patch,
    # jitter 2; the layout takes 60 of the 64 px.
    "cifar64": {"image_size": 64, "patch_size": 14, "gap": 7, "jitter": 2},
    # 96-px images (STL-10) and larger ones resized to a 96-px short side: the
    # paper's gap of half a patch, jitter a tenth of a patch (the paper's 7/96),
    # the layout 84 px, 7/8 of the side.
    "96px": {"image_size": 96, "patch_size": 20, "gap": 10, "jitter": 2},
    # The paper's own geometry, in images with a 448-px short side (a 4:3 image
    # then has 267K pixels, inside the paper's 150K-450K).
    "imagenet": {"image_size": 448, "patch_size": 96, "gap": 48, "jitter": 7},
}


def extract_patches(images: Tensor, corners: Tensor, size: int) -> Tensor:
    """N x C x size x size: from image i, the square whose top-left pixel is
    corners[i] = (row, column); one batched gather, no loop over images.
    The squares must lie inside the images (not checked: that needs a sync)."""
    n, c, height, width = images.shape
    corners = corners.to(images.device)
    steps = torch.arange(size, device=images.device)
    rows = corners[:, :1] + steps  # N x size
    columns = corners[:, 1:] + steps
    index = (rows[:, :, None] * width + columns[:, None, :]).view(n, 1, size * size)
    patches = images.reshape(n, c, height * width).gather(2, index.expand(n, c, size * size))
    return patches.view(n, c, size, size)


class RelativeLocationPairs:
    """(centre patch, neighbour patch, label) triples for context prediction.

    uint8 (or [0, 1] float) N x 3 x H x W images are first resized so their
    short side is `image_size` (bilinear, antialiased when shrinking; aspect
    kept; None: used as they are). Per image, a 3 x 3 layout of square
    patches of `patch_size` px, `gap` px apart, is placed uniformly at random
    where all of it fits, each patch then moved by its own jitter, uniform on
    {-jitter..jitter} px per axis. The centre patch is the layout's middle one,
    the neighbour the one at `NEIGHBOUR_OFFSETS[label]` with the label uniform
    on 0..7. The gap and the jitter keep the network from solving the task
    with low-level cues such as lines continuing across patches or matching
    boundary patterns (Sec. 3); adjacent patches are between gap - 2 jitter
    and gap + 2 jitter px apart, and never overlap.

    Placing the whole layout, not just the pair, keeps the label independent
    of where the centre patch lies in the image (near the top edge, "above"
    would otherwise be impossible, and image content tells the network where
    it is).

    `chromatic_guard` removes the chromatic-aberration shortcut of Sec. 4.2
    (lenses shift colour channels differently towards the image border, so a
    patch's colour fringes tell where it lies): "project" projects out the
    green-magenta axis (`project_out_green_magenta`); "drop_channels" keeps
    one random channel per patch and replaces the other two with Gaussian
    noise of std `noise_std` around mid-gray (`drop_channels`); "none" leaves
    the colours. The paper sets the noise to about 1/100 of the kept
    channel's standard deviation; here it is a fixed `noise_std` in [0, 1]
    pixel units (default 0.01, 1/100 of the range), so it needs no statistics
    of the patch.

    Params ("sample"): "label" long N; "centre" and "neighbour" long N x 2,
    each patch's top-left (row, column) in the resized image; with
    "drop_channels" also "centre_keep" and "neighbour_keep", long N in 0..2,
    the channel kept, and "centre_noise" and "neighbour_noise", float N x 2 x
    P x P standard normal, the dropped channels' noise.
    """

    def __init__(self, patch_size: int, gap: int, jitter: int, image_size: int | None = None,
                 chromatic_guard: str = "project", noise_std: float = 0.01) -> None:
        if patch_size < 1 or gap < 0 or jitter < 0:
            raise ValueError(f"patch_size must be >= 1 and gap, jitter >= 0, got patch_size={patch_size}, "
                             f"gap={gap}, jitter={jitter}")
        if gap < 2 * jitter:
            raise ValueError(f"gap ({gap}) must be at least 2 * jitter ({2 * jitter}) so that jittered "
                             "neighbours never overlap: raise gap or lower jitter")
        if chromatic_guard not in CHROMATIC_GUARDS:
            raise ValueError(f"chromatic_guard must be one of {CHROMATIC_GUARDS}, got {chromatic_guard!r}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.patch_size = int(patch_size)
        self.gap = int(gap)
        self.jitter = int(jitter)
        self.image_size = None if image_size is None else int(image_size)
        self.chromatic_guard = chromatic_guard
        self.noise_std = float(noise_std)
        if self.image_size is not None:
            self._check_fits(self.image_size, self.image_size)

    @classmethod
    def from_scale(cls, scale: str, chromatic_guard: str = "project", noise_std: float = 0.01,
                   **overrides: int) -> RelativeLocationPairs:
        """The geometry preset `SCALES[scale]`, with any of its keys overridden."""
        if scale not in SCALES:
            raise ValueError(f"unknown relative-location scale {scale!r}; choose from {sorted(SCALES)}")
        return cls(**{**SCALES[scale], **overrides}, chromatic_guard=chromatic_guard, noise_std=noise_std)

    @property
    def stride(self) -> int:
        """Distance in px between the top-left corners of adjacent unjittered patches."""
        return self.patch_size + self.gap

    @property
    def layout_size(self) -> int:
        """Side in px of the square the 3 x 3 layout needs, jitter included."""
        return 3 * self.patch_size + 2 * self.gap + 2 * self.jitter

    def _check_fits(self, height: int, width: int) -> None:
        if min(height, width) < self.layout_size:
            where = (f"image_size={self.image_size}" if self.image_size is not None
                     else f"the {height} x {width} images (image_size=None: no resize)")
            raise ValueError(
                f"the 3 x 3 patch layout needs 3 * patch_size + 2 * gap + 2 * jitter = 3 * {self.patch_size} "
                f"+ 2 * {self.gap} + 2 * {self.jitter} = {self.layout_size} px per side, more than "
                f"{where} allows: set image_size to at least {self.layout_size} or make patch_size, gap or "
                "jitter smaller")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize: the short side `image_size`, aspect kept."""
        if self.image_size is None:
            return height, width
        if height <= width:
            return self.image_size, max(self.image_size, round(width * self.image_size / height))
        return max(self.image_size, round(height * self.image_size / width)), self.image_size

    def resize(self, images: Tensor) -> Tensor:
        """uint8 (or [0, 1] float) images -> float32, resized to `resized_shape`."""
        images = to_unit_float(images)
        height, width = images.shape[-2:]
        size = self.resized_shape(height, width)
        if size == (height, width):
            return images
        # Antialiasing only when shrinking: it averages the pixels a sample
        # covers instead of aliasing; enlarging is plain bilinear either way.
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                             antialias=size[0] < height)

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Parameters for n images of height x width (before the resize), on
        `device`, drawn from `generator` (which must live on that device)."""
        height, width = self.resized_shape(height, width)
        self._check_fits(height, width)
        span, j = self.layout_size, self.jitter
        labels = torch.randint(0, NUM_LOCATIONS, (n,), device=device, generator=generator)
        # The layout's top-left corner, jitter margin included: uniform over every place the whole layout fits.
        origin = torch.stack([torch.randint(0, height - span + 1, (n,), device=device, generator=generator),
                              torch.randint(0, width - span + 1, (n,), device=device, generator=generator)], dim=1)
        jitters = torch.randint(-j, j + 1, (2, n, 2), device=device, generator=generator)
        middle = origin + j + self.stride  # the unjittered centre patch, grid cell (1, 1)
        offsets = torch.tensor(NEIGHBOUR_OFFSETS, device=device)[labels]
        params = {"label": labels, "centre": middle + jitters[0],
                  "neighbour": middle + offsets * self.stride + jitters[1]}
        if self.chromatic_guard == "drop_channels":
            shape = (n, 2, self.patch_size, self.patch_size)
            for patch in ("centre", "neighbour"):
                params[f"{patch}_keep"] = torch.randint(0, 3, (n,), device=device, generator=generator)
            for patch in ("centre", "neighbour"):
                params[f"{patch}_noise"] = torch.randn(shape, device=device, generator=generator)
        return params

    def _guard(self, patches: Tensor, params: dict[str, Tensor], patch: str) -> Tensor:
        if self.chromatic_guard == "project":
            return project_out_green_magenta(patches)
        if self.chromatic_guard == "drop_channels":
            return drop_channels(patches, params[f"{patch}_keep"], params[f"{patch}_noise"], self.noise_std)
        return patches

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(centre patches, neighbour patches), each float32 N x 3 x P x P, of
        the images that `params` was sampled for; a pure function of its arguments."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"relative-location pairs need N x 3 x H x W images, got {tuple(images.shape)}")
        images = self.resize(images)
        centre = extract_patches(images, params["centre"], self.patch_size)
        neighbour = extract_patches(images, params["neighbour"], self.patch_size)
        return self._guard(centre, params, "centre"), self._guard(neighbour, params, "neighbour")

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(centre patches, neighbour patches, labels) for a batch, sampled on the images' device."""
        n, _, height, width = images.shape
        params = self.sample(n, height, width, images.device, generator)
        centre, neighbour = self.apply(images, params)
        return centre, neighbour, params["label"]


class PatchPairs:
    """The method's views, [centre, neighbour, labels], normalised with the
    data set's mean and std (made in the loaders' workers or batched on the
    device alike)."""

    num_views = 3  # centre, neighbour, labels

    def __init__(self, pairs: RelativeLocationPairs, mean: List[float], std: List[float]) -> None:
        self.pairs, self.mean, self.std = pairs, list(mean), list(std)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> List[Tensor]:
        centre, neighbour, labels = self.pairs(to_unit_float(images), generator)
        return [normalize(centre, self.mean, self.std), normalize(neighbour, self.mean, self.std), labels]


__all__ = ["NEIGHBOUR_OFFSETS", "NUM_LOCATIONS", "SCALES", "PatchPairs", "RelativeLocationPairs", "extract_patches"]
