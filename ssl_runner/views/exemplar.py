"""Exemplar-CNN's strong transformations (Dosovitskiy et al. 2014, Sec. 2):
a small rotation, "contrast 1" along the pixels' principal components,
"contrast 2" and "color" in HSV; and the recipe that chains them with the
crop ("translation", "scaling") for the method.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.views.augmentation import Augmentation, log_uniform, uniform
from ssl_runner.views.augmentations import HorizontalFlip
from ssl_runner.views.color import hue_sixths, rgb_from_sixths
from ssl_runner.views.crop import RandomResizedCrop
from ssl_runner.views.protocol import Device
from ssl_runner.views.recipe import ViewRecipe


class RandomRotation(Augmentation):
    """Rotation about the image centre by an angle ~ U(-degrees, degrees),
    bilinear, the corners filled by reflection (Exemplar-CNN's rotation of up
    to 20 degrees, Dosovitskiy et al. 2014, Sec. 2). Square images (put it
    after the crop). Params: "angle", float N, in degrees."""

    name = "small_rotation"  # "rotation" is Rotation90's

    def __init__(self, degrees: float = 20.0) -> None:
        self.degrees = degrees

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"angle": uniform(n, -self.degrees, self.degrees, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("RandomRotation needs square images (put it after the crop)")
        theta = params["angle"].to(device=images.device, dtype=images.dtype) * (math.pi / 180)
        cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
        matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

# The principal components of natural images' RGB pixels, one per column, by
# decreasing variance (AlexNet's ImageNet PCA, as fb.resnet.torch's Lighting):
# luminance, then two opponent colour axes; nearly the same for CIFAR.
PIXEL_PCA = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class PrincipalComponentScaling(Augmentation):
    """Exemplar-CNN's "contrast 1" (Dosovitskiy et al. 2014, Sec. 2): each
    pixel's projection on the principal components of the pixels, taken
    about `mean`, multiplied by a factor per component (one per image, for
    all its pixels), log-uniform in `factor`; clamped to [0, 1].
    Params: "factors", float N x 3."""

    name = "pca_contrast"

    def __init__(self, mean: Sequence[float], factor: tuple[float, float] = (0.5, 2.0),
                 components: Sequence[Sequence[float]] = PIXEL_PCA) -> None:
        self.mean = list(mean)
        self.factor = tuple(factor)
        self.components = [list(row) for row in components]

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"factors": log_uniform(3 * n, *self.factor, device, generator).view(n, 3)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        v = torch.tensor(self.components, device=images.device, dtype=images.dtype)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        factors = params["factors"].to(device=images.device, dtype=images.dtype)
        # V diag(f) V^T per image: scale the coordinates along each component
        # (as a broadcast sum: a batched 3 x 3 matmul is 1000x slower on a CPU).
        mix = (v[:, None, :] * v[None, :, :] * factors[:, None, None, :]).sum(-1)
        centred = (images - mean).flatten(2)
        return torch.baddbmm(mean.view(1, 3, 1), mix, centred).view_as(images).clamp_(0.0, 1.0)


class HSVPower(Augmentation):
    """Exemplar-CNN's "contrast 2" and "color" (Dosovitskiy et al. 2014,
    Sec. 2): saturation and value each raised to a power (log-uniform in
    `power`), multiplied by a factor ~ U(`factor`) and shifted by an offset
    ~ U(-offset, offset), clamped to [0, 1]; the hue rotated by ~ U(-hue,
    hue) turns. One draw per image and channel (S and V independently).
    Params: "s_power", "s_factor", "s_offset", "v_power", "v_factor",
    "v_offset", "hue", float N each."""

    name = "hsv"

    def __init__(self, power: tuple[float, float] = (0.25, 4.0), factor: tuple[float, float] = (0.7, 1.4),
                 offset: float = 0.1, hue: float = 0.1) -> None:
        self.power, self.factor, self.offset, self.hue = tuple(power), tuple(factor), offset, hue

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        params = {}
        for channel in ("s", "v"):
            params[f"{channel}_power"] = log_uniform(n, *self.power, device, generator)
            params[f"{channel}_factor"] = uniform(n, *self.factor, device, generator)
            params[f"{channel}_offset"] = uniform(n, -self.offset, self.offset, device, generator)
        params["hue"] = uniform(n, -self.hue, self.hue, device, generator)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        def per_image(name: str) -> Tensor:
            return params[name].to(device=images.device, dtype=images.dtype).view(-1, 1, 1)

        def transform(x: Tensor, channel: str) -> Tensor:  # x ** power * factor + offset, in place
            return x.pow_(per_image(f"{channel}_power")).mul_(per_image(f"{channel}_factor")).add_(
                per_image(f"{channel}_offset")).clamp_(0.0, 1.0)

        # In HSV's parts as adjust_hue keeps them (hue in sixths, chroma = S V,
        # value): no stacked HSV image, the hue reduced mod 6 on the way back.
        sixths, chroma, value = hue_sixths(images)
        saturation = transform(chroma / value.clamp_min(torch.finfo(value.dtype).tiny), "s")
        value = transform(value, "v")
        sixths += 6.0 * per_image("hue")
        return rgb_from_sixths(sixths, saturation.mul_(value), value).clamp_(0.0, 1.0)


def exemplar_recipe(cfg: DictConfig) -> ViewRecipe:
    """The strong random transformation of Sec. 2, one fresh draw per sample (one view)."""
    m, d = cfg.method, cfg.data
    augmentations = [RandomResizedCrop(d.image_size, tuple(m.crop_scale), (1.0, 1.0))]  # translation, scale
    if m.hflip_p > 0:
        augmentations.append(HorizontalFlip(m.hflip_p))
    if m.rotation_degrees > 0:
        augmentations.append(RandomRotation(m.rotation_degrees))  # rotation
    augmentations += [
        PrincipalComponentScaling(list(d.mean), tuple(m.pca_factor)),  # contrast 1
        HSVPower(tuple(m.hsv_power), tuple(m.hsv_factor), m.hsv_offset, m.hue_shift),  # contrast 2, color
    ]
    return ViewRecipe(augmentations, list(d.mean), list(d.std), num_views=1)


__all__ = ["HSVPower", "PIXEL_PCA", "PrincipalComponentScaling", "RandomRotation", "exemplar_recipe"]
