"""The transformations of SimCLR's augmentation-composition study (Chen et al.
2020, Sec. 3 and Fig. 4-5) that the SimCLR family lacks: cutout, Sobel
filtering and Gaussian noise; and `COMPOSITION_TRANSFORMS`, the names of the
study's seven transformations that `views.first` / `views.second` choose from
(`recipe.ViewRecipe.composition` builds them). Parameters are sampled
explicitly, then applied (see `augmentation.py`); every parameter is in the
pixels of the images that `apply` receives (after the crop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.augmentation import Augmentation, coin, uniform
from ssl_runner.views.color import grayscale, per_image
from ssl_runner.views.protocol import Device

# Fig. 5's transformations, in the paper's order: crop (with resize and flip),
# cutout, colour distortion (jitter + grayscale), Sobel filtering, Gaussian
# noise, Gaussian blur, rotation by 90, 180 or 270 degrees.
COMPOSITION_TRANSFORMS = ("crop", "cutout", "color", "sobel", "noise", "blur", "rotate")


class Cutout(Augmentation):
    """One square hole per image, filled with `fill` (DeVries & Taylor 2017).

    The centre is uniform over all pixels, so the hole may reach past the
    border and be clipped, as DeVries & Taylor found important. SimCLR does
    not give its size (?): the side is uniform on {1..max_fraction x the
    shorter side}, up to DeVries & Taylor's CIFAR-10 hole (16 px of 32).
    The hole covers rows [row - side // 2, row - side // 2 + side), the same
    for columns. Params: "centre" long N x 2 (row, column), "side" long N.
    """

    name = "cutout"

    def __init__(self, max_fraction: float = 0.5, fill: float = 0.0) -> None:
        self.max_fraction = max_fraction
        # Black, as SimCLR's illustration (Fig. 4); DeVries & Taylor cut out
        # normalised images, so their 0 is the mean colour.
        self.fill = fill

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        longest = max(1, round(self.max_fraction * min(height, width)))
        side = torch.randint(1, longest + 1, (n,), device=device, generator=generator)
        rows = torch.randint(0, height, (n,), device=device, generator=generator)
        columns = torch.randint(0, width, (n,), device=device, generator=generator)
        return {"centre": torch.stack([rows, columns], dim=1), "side": side}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        height, width = images.shape[-2:]
        centre = params["centre"].to(images.device)
        side = params["side"].to(images.device)
        start = centre - (side // 2).unsqueeze(1)  # N x 2: top, left
        end = start + side.unsqueeze(1)
        ys = torch.arange(height, device=images.device)
        xs = torch.arange(width, device=images.device)
        in_rows = (ys >= start[:, :1]) & (ys < end[:, :1])  # N x H
        in_columns = (xs >= start[:, 1:]) & (xs < end[:, 1:])  # N x W
        hole = (in_rows.unsqueeze(2) & in_columns.unsqueeze(1)).unsqueeze(1)
        return images.masked_fill(hole, self.fill)


class Sobel(Augmentation):
    """With probability p (the study: always), the Sobel gradient magnitude of
    the luma, replicated to 3 channels and divided by the image's largest
    magnitude, so every edge map spans [0, 1] (a fixed scale, the largest
    magnitude possible, 4 sqrt 2, would leave natural images nearly black).
    Borders are replicated, so a constant image maps to 0, not to a frame.
    Params: "apply", bool N.
    """

    name = "sobel"

    def __init__(self, p: float = 1.0) -> None:
        self.p = p

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"apply": coin(n, self.p, device, generator)}

    def edges(self, images: Tensor) -> Tensor:
        """N x 3 x H x W RGB -> N x 3 x H x W edge magnitudes in [0, 1]."""
        luma = F.pad(grayscale(images), (1, 1, 1, 1), mode="replicate")
        # The kernels [-1 0 1] x [1 2 1]^T and its transpose, as differences
        # then sums: a flat region gives exactly 0 (a convolution leaves
        # rounding noise, which the scaling below would blow up).
        across = luma[..., 2:] - luma[..., :-2]  # N x 1 x H+2 x W
        d_dx = across[..., :-2, :] + 2 * across[..., 1:-1, :] + across[..., 2:, :]
        down = luma[..., 2:, :] - luma[..., :-2, :]  # N x 1 x H x W+2
        d_dy = down[..., :-2] + 2 * down[..., 1:-1] + down[..., 2:]
        magnitude = (d_dx.square() + d_dy.square()).sqrt()
        peak = magnitude.amax(dim=(-2, -1), keepdim=True)
        return (magnitude / peak.clamp_min(1e-6)).expand(-1, images.shape[-3], -1, -1)

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return torch.where(per_image(params["apply"], images), self.edges(images), images)


class GaussianNoise(Augmentation):
    """Additive Gaussian noise with a per-image standard deviation ~ U(std),
    independent per pixel and channel, then clamped to [0, 1]. SimCLR does
    not give the noise level (?): up to 0.1 of the pixel range by default.
    The noise itself is drawn in `sample`, so `apply` stays pure.
    Params: "std" float N; "noise" float N x 3 x H x W ~ N(0, 1).
    """

    name = "noise"
    channels = 3

    def __init__(self, std: tuple[float, float] = (0.0, 0.1)) -> None:
        self.std = tuple(std)

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"std": uniform(n, self.std[0], self.std[1], device, generator),
                "noise": torch.randn(n, self.channels, height, width, device=device, generator=generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        noise = params["noise"].to(device=images.device, dtype=images.dtype)
        if noise.shape != images.shape:
            raise ValueError(f"GaussianNoise sampled noise of shape {tuple(noise.shape)} for images of shape "
                             f"{tuple(images.shape)}: sample with the height and width that apply gets")
        std = per_image(params["std"], images).to(images.dtype)
        return (images + std * noise).clamp(0.0, 1.0)


__all__ = ["COMPOSITION_TRANSFORMS", "Cutout", "GaussianNoise", "Sobel"]
