"""SimCLR's augmentations after the crop (Chen et al. 2020, Appendix A: flip,
colour jitter, grayscale, blur; BYOL's solarisation) and LooC's rotation by
quarter turns, each following torchvision's tensor semantics where noted.
Parameters are sampled explicitly, then applied (see `augmentation.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_runner.views.augmentation import Augmentation, coin, uniform
from ssl_runner.views.color import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, grayscale,
                                    per_image)
from ssl_runner.views.protocol import Device


class _PerImageCoin(Augmentation):
    """Applied to each image with probability p (`transform`, on the chosen
    images only); its parameter is one bool per image, under `param`."""

    param = ""

    def __init__(self, p: float) -> None:
        self.p = p

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {self.param: coin(n, self.p, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        idx = params[self.param].to(images.device).nonzero().squeeze(1)
        return images.clone().index_copy_(0, idx, self.transform(images.index_select(0, idx)))

    def transform(self, images: Tensor) -> Tensor:
        raise NotImplementedError


class HorizontalFlip(_PerImageCoin):
    """Mirror left-right with probability p. Params: "flip", bool N."""

    name = param = "flip"
    moves_pixels_only = True

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def transform(self, images: Tensor) -> Tensor:
        return images.flip(-1)


class Rotation90(Augmentation):
    """With probability p, rotate by 90, 180 or 270 degrees (counter-clockwise,
    one of the three uniformly); square images only. Params: "quarter_turns",
    long N in {0, 1, 2, 3} (0: not rotated). LooC's rotation augmentation
    (Xiao et al. 2021, Sec. 4: rotation by multiples of 90 degrees)."""

    name = "rotation"
    moves_pixels_only = True

    def __init__(self, p: float = 0.75) -> None:
        self.p = p

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        turns = torch.randint(1, 4, (n,), device=device, generator=generator)
        return {"quarter_turns": torch.where(coin(n, self.p, device, generator), turns, 0)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError("Rotation90 needs square images (put it after the crop)")
        turns = params["quarter_turns"].to(images.device)
        out = images.clone()
        for k in range(1, 4):
            idx = (turns == k).nonzero().squeeze(1)
            if len(idx):
                out.index_copy_(0, idx, images.index_select(0, idx).rot90(k, dims=(-2, -1)).contiguous())
        return out


class ColorJitter(Augmentation):
    """With probability p, brightness, contrast, saturation and hue changes in
    a random order per image, each clamped to [0, 1] (torchvision's
    `ColorJitter` on tensors; SimCLR Appendix A, strength s giving 0.8 s and
    0.2 s).

    Params: "apply" bool N; "brightness", "contrast", "saturation" factors
    ~ U(max(0, 1 - x), 1 + x); "hue" ~ U(-h, h); "order" long N x 4, row i
    the ops of image i in the order applied (0 brightness, 1 contrast,
    2 saturation, 3 hue).
    """

    name = "color"
    ops = ("brightness", "contrast", "saturation", "hue")
    _op_functions = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def __init__(self, p: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1) -> None:
        self.p = p
        self.factor_strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        self.hue = hue

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        params = {"apply": coin(n, self.p, device, generator)}
        for op, strength in self.factor_strengths.items():
            params[op] = uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, device, generator)
        params["hue"] = uniform(n, -self.hue, self.hue, device, generator)
        # argsort of i.i.d. uniforms: a uniformly random permutation per row.
        params["order"] = torch.rand(n, len(self.ops), device=device, generator=generator).argsort(dim=1)
        return params

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        # Group the images by (position, op): slot = 4 position + op, images
        # left alone in slot 16. One sort and one host sync, then each op runs
        # only on the images doing it at that position: ~4 ops per image.
        device, n_ops = images.device, len(self.ops)
        order = params["order"].to(device)
        positions = torch.arange(n_ops, device=device)
        slots = torch.where(params["apply"].to(device).unsqueeze(1), positions * n_ops + order, n_ops * n_ops)
        slots = slots.flatten()
        image_of_slot = torch.arange(len(images), device=device).repeat_interleave(n_ops)
        images_by_slot = image_of_slot[slots.argsort(stable=True)]
        counts = torch.bincount(slots, minlength=n_ops * n_ops + 1).tolist()
        out = images.clone()
        for slot, idx in enumerate(images_by_slot.split(counts)[:n_ops * n_ops]):
            if len(idx):
                op = slot % n_ops
                # index_select / index_copy_: much faster than tensor indexing on a CPU.
                changed = self._op_functions[op](out.index_select(0, idx), params[self.ops[op]].to(device)[idx])
                out.index_copy_(0, idx, changed)
        return out


class RandomGrayscale(_PerImageCoin):
    """With probability p, replace RGB by its luma, kept as 3 channels
    (torchvision's `RandomGrayscale`). Params: "gray", bool N."""

    name, param = "grayscale", "gray"

    def __init__(self, p: float = 0.2) -> None:
        super().__init__(p)

    def transform(self, images: Tensor) -> Tensor:
        return grayscale(images).expand(-1, images.shape[-3], -1, -1).contiguous()


class GaussianBlur(Augmentation):
    """With probability p, a Gaussian blur with sigma ~ U(sigma) per image
    (SimCLR Appendix A: p 0.5, sigma in [0.1, 2.0], a kernel of 10% of the
    image side). torchvision's `gaussian_blur` kernel and reflect padding,
    done as two depthwise 1-D convolutions so that each image has its own
    sigma. Params: "apply" bool N, "sigma" float N.

    Each image's kernel stops at ceil(4 sigma) when that is inside the 10%
    radius: the weights beyond hold under 2e-5 of the mass, so a pixel moves by
    less than 1e-4 from torchvision's (a 40th of a uint8 level), and at 224 px
    (radius 11, sigma <= 2) the blur takes 60 % of the time. Images sharing a radius are
    convolved together.
    """

    name = "blur"
    sigmas_per_kernel_radius = 4.0

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0), kernel_fraction: float = 0.1) -> None:
        self.p = p
        self.sigma = tuple(sigma)
        self.kernel_fraction = kernel_fraction

    def kernel_size(self, side: int) -> int:
        """As SimCLR's code: radius int(fraction side) // 2, size 2 radius + 1, here at least 3."""
        radius = max(1, int(self.kernel_fraction * side) // 2)
        return 2 * radius + 1

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"apply": coin(n, self.p, device, generator),
                "sigma": uniform(n, self.sigma[0], self.sigma[1], device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        idx = params["apply"].to(images.device).nonzero().flatten()
        if not idx.numel():
            return images
        sigma = params["sigma"].to(device=images.device, dtype=images.dtype)
        full_radius = self.kernel_size(images.shape[-2]) // 2
        radii = (self.sigmas_per_kernel_radius * sigma[idx]).ceil().clamp(1, full_radius).long()
        out = images.clone()
        for radius in radii.unique().tolist():  # one host sync; at most full_radius groups
            group = idx[radii == radius]
            out.index_copy_(0, group, blurred(images.index_select(0, group), sigma[group], radius))
        return out


def blurred(images: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """N x C x H x W images, each blurred with a (2 radius + 1)-tap Gaussian of
    its own sigma, reflect-padded."""
    n, channels, height, width = images.shape
    size = 2 * radius + 1
    offsets = torch.arange(size, device=images.device, dtype=images.dtype) - radius
    kernels = torch.exp(-0.5 * (offsets / sigma.unsqueeze(1)) ** 2)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    # Every (image, channel) plane is its own group of a depthwise convolution.
    groups = n * channels
    planes = images.reshape(1, groups, height, width)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"),
                      kernels.view(groups, 1, 1, size), groups=groups)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"),
                      kernels.view(groups, 1, size, 1), groups=groups)
    return planes.view(n, channels, height, width)


class Solarize(Augmentation):
    """With probability p, x -> 1 - x wherever x >= threshold (torchvision's
    `solarize`; BYOL's views). Params: "apply", bool N."""

    name = "solarize"

    def __init__(self, p: float = 0.0, threshold: float = 0.5) -> None:
        self.p = p
        self.threshold = threshold

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return {"apply": coin(n, self.p, device, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        solarized = torch.where(images >= self.threshold, 1.0 - images, images)
        return torch.where(per_image(params["apply"], images), solarized, images)


__all__ = ["ColorJitter", "GaussianBlur", "HorizontalFlip", "RandomGrayscale", "Rotation90", "Solarize"]
