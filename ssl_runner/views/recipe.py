"""`ViewRecipe`: a chain of augmentations with sampled parameters, then
normalisation; the view maker of the contrastive methods, and the crop and
flip inside the pretext tasks' makers. `view_recipe_from_config` builds the
one that `cfg.views` describes.

A recipe's `sample` returns `ViewParams` (augmentation name -> its
parameters), so a caller can copy one augmentation's parameters from one view
into another (LooC's leave-one-out views). The family and its defaults follow
SimCLR (Chen et al. 2020, Appendix A); `ViewRecipe.composition` builds the
views of its augmentation-composition study (Sec. 3, `views.first` and
`views.second`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ssl_runner.errors import UserError
from ssl_runner.views.augmentation import Augmentation
from ssl_runner.views.augmentations import (ColorJitter, GaussianBlur, HorizontalFlip, RandomGrayscale, Rotation90,
                                            Solarize)
from ssl_runner.views.crop import RandomResizedCrop
from ssl_runner.views.pixels import normalize, to_unit_float
from ssl_runner.views.protocol import Device
from ssl_runner.views.study_augmentations import COMPOSITION_TRANSFORMS, Cutout, GaussianNoise, Sobel

ViewParams = dict[str, dict[str, Tensor]]
# Floats per chunk of images on a CPU (see `ViewRecipe.views_of_crops`): in cache, not in RAM.
CPU_CHUNK_BYTES = 2 * 2**20


class ViewRecipe:
    """A chain of augmentations, the first a `RandomResizedCrop` (so every
    later one works on size x size images), then normalisation:
    uint8 (or [0, 1] float) N x 3 x H x W in, float32 N x 3 x size x size out.
    """

    def __init__(self, augmentations: list[Augmentation], mean: Sequence[float], std: Sequence[float],
                 num_views: int = 1) -> None:
        if num_views < 1:
            raise ValueError(f"a view recipe makes at least one view per image, got num_views={num_views}")
        if not augmentations or not isinstance(augmentations[0], RandomResizedCrop):
            raise ValueError("a view recipe starts with a RandomResizedCrop (it sets the output size)")
        names = [augmentation.name for augmentation in augmentations]
        if len(set(names)) != len(names):
            raise ValueError(f"augmentation names must be unique (they key ViewParams), got {names}")
        self.augmentations = list(augmentations)
        self.names = names
        self.mean, self.std = list(mean), list(std)
        self.size: int = augmentations[0].size
        # How many independent views of each image `views` makes.
        self.num_views = num_views

    def sample(self, n: int, height: int, width: int, device: Device = None,
               generator: torch.Generator | None = None) -> ViewParams:
        """Parameters of every augmentation for n images of height x width.
        The augmentations after the crop sample for the size x size images
        they receive (cutout's hole and the noise are in those pixels)."""
        crop, *after_crop = self.augmentations
        params = {crop.name: crop.sample(n, height, width, device, generator)}
        params.update({aug.name: aug.sample(n, self.size, self.size, device, generator) for aug in after_crop})
        return params

    def apply(self, images: Tensor, params: ViewParams) -> Tensor:
        """The views that `params` describe; a pure function of its arguments."""
        views = to_unit_float(images)
        for aug in self.augmentations:
            views = aug.apply(views, params[aug.name])
        return normalize(views, self.mean, self.std)

    def views_of_crops(self, crops: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One view of each crop already taken (uint8 N x 3 x size x size, e.g.
        `data/crops.py` from files of any size): every augmentation after
        the crop, sampled and applied as `apply` does, then normalisation.
        Leading flips and quarter turns run on the uint8 crops, a quarter of
        the bytes of floats, with the same result.

        On a CPU the sampled batch is applied a few images at a time: each
        augmentation is a handful of passes over its images, and a chunk of
        `CPU_CHUNK_BYTES` of floats stays in cache between them (1.6x faster
        at 224 px; the same views to float rounding; docs/performance.md)."""
        _, *after_crop = self.augmentations
        n = len(crops)
        params = [aug.sample(n, self.size, self.size, crops.device, generator) for aug in after_crop]
        step = max(1, CPU_CHUNK_BYTES // (4 * crops[0].numel())) if crops.device.type == "cpu" and n else n
        if step >= n:
            return self._views_after_crop(crops, after_crop, params)
        out = torch.empty(crops.shape, dtype=torch.float32)
        for start in range(0, n, step):
            chunk_params = [{key: value[start:start + step] for key, value in p.items()} for p in params]
            out[start:start + step] = self._views_after_crop(crops[start:start + step], after_crop, chunk_params)
        return out

    def _views_after_crop(self, crops: Tensor, after_crop: list[Augmentation],
                          params: list[dict[str, Tensor]]) -> Tensor:
        views = crops
        for aug, aug_params in zip(after_crop, params):
            if views.dtype == torch.uint8 and not aug.moves_pixels_only:
                views = to_unit_float(views)
            views = aug.apply(views, aug_params)
        return normalize(to_unit_float(views), self.mean, self.std)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """`num_views` independent views of each image (the uint8 batch converted once)."""
        images = to_unit_float(images)
        return [self(images, generator) for _ in range(self.num_views)]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        n, _, height, width = images.shape
        return self.apply(images, self.sample(n, height, width, images.device, generator))

    @classmethod
    def simclr(cls, size: int, mean: Sequence[float], std: Sequence[float],
               crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
               hflip_p: float = 0.5, jitter_p: float = 0.8, jitter_strength: float = 0.5,
               grayscale_p: float = 0.2, blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
               blur_kernel_fraction: float = 0.1, solarize_p: float = 0.0, rotation_p: float = 0.0,
               num_views: int = 1) -> ViewRecipe:
        """SimCLR's family (Appendix A), in its order: crop, flip, colour
        jitter (strength s: brightness, contrast, saturation 0.8 s, hue
        0.2 s), grayscale, blur, solarisation; plus LooC's rotation by
        multiples of 90 degrees after the flip. Augmentations with
        probability 0 are left out, so they cost nothing and have no params.
        `num_views`: views per image of `views` (SimCLR's pairs: 2)."""
        augmentations: list[Augmentation] = [RandomResizedCrop(size, crop_scale, crop_ratio)]
        if hflip_p > 0:
            augmentations.append(HorizontalFlip(hflip_p))
        if rotation_p > 0:
            augmentations.append(Rotation90(rotation_p))
        if jitter_p > 0:
            s = jitter_strength
            augmentations.append(ColorJitter(jitter_p, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s))
        if grayscale_p > 0:
            augmentations.append(RandomGrayscale(grayscale_p))
        if blur_p > 0:
            augmentations.append(GaussianBlur(blur_p, blur_sigma, blur_kernel_fraction))
        if solarize_p > 0:
            augmentations.append(Solarize(solarize_p))
        return cls(augmentations, mean, std, num_views)

    @classmethod
    def composition(cls, transforms: Sequence[str], size: int, mean: Sequence[float], std: Sequence[float],
                    crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                    hflip_p: float = 0.5, jitter_p: float = 0.8, jitter_strength: float = 0.5,
                    grayscale_p: float = 0.2, blur_sigma: tuple[float, float] = (0.1, 2.0),
                    blur_kernel_fraction: float = 0.1, num_views: int = 1) -> ViewRecipe:
        """SimCLR's augmentation-composition study (Sec. 3, Fig. 5): one or
        two of `COMPOSITION_TRANSFORMS`, the first then the second, each
        always applied; the same one twice is that one alone (Fig. 5's
        diagonal). "crop" is the random resized crop with its flip (Sec. 3.1);
        "color" SimCLR's jitter (strength s, p `jitter_p`) and grayscale;
        "blur" at p 1; "rotate" a quarter, half or three-quarter turn.

        A recipe must open with a crop (it sets the size): without "crop",
        or with it second, it opens with the whole image resized to `size`
        (the central square of a non-square image); a second "crop" then
        crops the transformed image. The paper transforms one branch and
        leaves the other as the (cropped) image; here every view is
        transformed alike, as the methods make their views from one recipe.
        """
        unknown = [name for name in transforms if name not in COMPOSITION_TRANSFORMS]
        if unknown or not 1 <= len(transforms) <= 2:
            raise ValueError(f"a composition is one or two of {COMPOSITION_TRANSFORMS}, got {list(transforms)}")
        transforms = list(dict.fromkeys(transforms))  # (x, x): x alone
        s = jitter_strength
        crop = RandomResizedCrop(size, crop_scale, crop_ratio)
        steps: dict[str, list[Augmentation]] = {
            "crop": [crop, HorizontalFlip(hflip_p)] if hflip_p > 0 else [crop],
            "cutout": [Cutout()],
            "color": [ColorJitter(jitter_p, 0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), RandomGrayscale(grayscale_p)],
            "sobel": [Sobel()],
            "noise": [GaussianNoise()],
            "blur": [GaussianBlur(1.0, blur_sigma, blur_kernel_fraction)],
            "rotate": [Rotation90(1.0)],
        }
        augmentations: list[Augmentation] = []
        if transforms[0] != "crop":
            augmentations.append(RandomResizedCrop(size, (1.0, 1.0), (1.0, 1.0)))
            crop.name = "second_crop"  # "crop" names the opening one (names key ViewParams)
        for name in transforms:
            augmentations += steps[name]
        return cls(augmentations, mean, std, num_views)


def view_recipe_from_config(cfg: DictConfig, num_views: int, **overrides: Any) -> ViewRecipe:
    """The training views that `cfg.views` describes, at `cfg.data.image_size`,
    `num_views` per image (`overrides`: keyword arguments of
    `ViewRecipe.simclr` to replace). With `views.first` set, the
    composition-study views that `views.first` then `views.second` name."""
    v = cfg.views
    first, second = OmegaConf.select(cfg, "views.first"), OmegaConf.select(cfg, "views.second")
    if first is not None:
        if overrides:
            raise UserError(
                f"views.first={first} (SimCLR's augmentation-composition study) replaces the views of methods that "
                f"take cfg.views as they are, but method '{cfg.method.name}' adapts them to its own task. Set "
                "views.first=null views.second=null, or run the study with a contrastive method, e.g. method=simclr.")
        return ViewRecipe.composition(
            [first] + ([second] if second is not None else []), size=cfg.data.image_size, mean=list(cfg.data.mean),
            std=list(cfg.data.std), crop_scale=tuple(v.crop_scale), crop_ratio=tuple(v.crop_ratio),
            hflip_p=v.hflip_p, jitter_p=v.jitter_p, jitter_strength=v.jitter_strength, grayscale_p=v.grayscale_p,
            blur_sigma=tuple(v.blur_sigma), blur_kernel_fraction=v.blur_kernel_fraction, num_views=num_views)
    return ViewRecipe.simclr(**{**dict(
        size=cfg.data.image_size,
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        crop_scale=tuple(v.crop_scale),
        crop_ratio=tuple(v.crop_ratio),
        hflip_p=v.hflip_p,
        jitter_p=v.jitter_p,
        jitter_strength=v.jitter_strength,
        grayscale_p=v.grayscale_p,
        blur_p=v.blur_p,
        blur_sigma=tuple(v.blur_sigma),
        blur_kernel_fraction=v.blur_kernel_fraction,
        solarize_p=v.solarize_p,
        rotation_p=v.rotation_p,
    ), **overrides}, num_views=num_views)


__all__ = ["ViewParams", "ViewRecipe", "view_recipe_from_config"]
