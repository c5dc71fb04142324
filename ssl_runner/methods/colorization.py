"""Colorization: predicting the colours of a grayscale image (Zhang, Isola &
Efros, "Colorful Image Colorization", ECCV 2016).

The network sees only the lightness L of an image and predicts, for each
pixel of a map at a quarter of the input resolution, a distribution over the
Q quantised in-gamut ab bins; it is trained with a class-rebalanced
multinomial cross-entropy against soft-encoded true colours (Sec. 2.1). The
colour-space and bin functions are in ssl_runner/data/lab.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.data.datasets import ImageSet, resize_center_crop
from ssl_runner.data.lab import (ab_gamut_bins, annealed_mean, empirical_bin_distribution, gray_from_lightness,
                                 lab_to_rgb, rebalanced_cross_entropy, rebalancing_weights, rgb_to_lab, soft_encode)
from ssl_runner.data.views import ViewRecipe, normalize, to_unit_float
from ssl_runner.methods.base import BaseMethod, SSLStepOutput, save_image_grid, view_recipe_from_config
from ssl_runner.methods.registry import register_method

log = logging.getLogger(__name__)

GRID_FILE = "colorization_grid.png"
# Images converted to Lab per batch when estimating the bin distribution.
STATISTICS_BATCH = 500


@dataclass
class ColorizationConfig:
    name: str = "colorization"
    # Soft encoding of the true ab (Sec. 2.1): the 5 nearest bins, weighted
    # by a Gaussian of sigma 5 of their distance.
    neighbours: int = 5
    sigma: float = 5.0
    # Class rebalancing (Eq. 4): w ~ ((1 - lambda) p~ + lambda / Q)^-1, p~
    # the bin distribution smoothed with a Gaussian of sigma 5 (the same
    # `sigma`); lambda = 1 turns rebalancing off.
    rebalance_lambda: float = 0.5
    # The annealed mean's temperature (Sec. 2.2), for the saved colour grid only.
    annealed_temperature: float = 0.38
    # Training images the bin distribution p is estimated from, evenly
    # spaced over the set (0: no estimate, every weight 1).
    statistics_images: int = 5000
    # Channels of the decoder's conv blocks (the paper's conv8: 256).
    decoder_width: int = 128
    # Area range of the random crop, instead of views.crop_scale. The paper
    # crops 224 of 256 px (77 % of the area, no scale jitter); a moderate
    # range around it adds scale augmentation without cropping to a patch
    # whose colours lack their context.
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])


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
    N x 3 x size x size, ab target N x 2 x t x t], through the same
    `views(images, count)` interface as a ViewRecipe (so they are made in the
    loaders' workers or batched on the device alike)."""

    def __init__(self, recipe: ViewRecipe, mean: Sequence[float], std: Sequence[float], target_size: int) -> None:
        self.recipe = recipe
        self.mean, self.std = list(mean), list(std)
        self.target_size = target_size

    def views(self, images: Tensor, count: int = 2, generator: torch.Generator | None = None) -> List[Tensor]:
        """`count` is ignored: one augmented image gives both views (the input and its target)."""
        images = to_unit_float(images)
        n, _, height, width = images.shape
        params = self.recipe.sample(n, height, width, images.device, generator)
        # In float32 even under mixed precision: a bf16 colour-matrix product
        # (0.4 % precision) would move a = 500 (fx - fy) by up to about a unit.
        with torch.autocast(images.device.type, enabled=False):
            for augmentation in self.recipe.augmentations:  # unnormalised: normalised after the Lab conversion
                images = augmentation.apply(images, params[augmentation.name])
            return list(colorization_pair(images, self.mean, self.std, self.target_size))


def _conv_bn_relu(in_channels: int, out_channels: int) -> List[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class ColourDecoder(nn.Module):
    """The backbone's last feature map -> Q bin logits at output_size x
    output_size: a conv block, then `upsamplings` times a bilinear 2x
    upsampling and a conv block (the paper's conv8 upsamples with a
    deconvolution), then a 1 x 1 convolution to the Q logits (conv8_313)."""

    def __init__(self, in_channels: int, width: int, num_bins: int, upsamplings: int, output_size: int) -> None:
        super().__init__()
        layers = _conv_bn_relu(in_channels, width)
        for _ in range(upsamplings):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn_relu(width, width)]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_bins, 1)
        self.output_size = output_size

    def forward(self, feature_map: Tensor) -> Tensor:
        x = self.body(feature_map)
        if tuple(x.shape[-2:]) != (self.output_size, self.output_size):  # sides that are not powers of two apart
            x = F.interpolate(x, size=(self.output_size, self.output_size), mode="bilinear", align_corners=False)
        return self.classifier(x)


@register_method("colorization", ColorizationConfig, paper="Zhang et al., ECCV 2016", published="no CIFAR-10 figure")
class Colorization(BaseMethod):
    """The backbone on the lightness of an image, to its last stage (the
    whole encoder the evaluation stages use is trained), then a small
    decoder to Q ab-bin logits per pixel at a quarter of the input
    resolution (56 from 224, 8 from 32), trained with the class-rebalanced
    cross-entropy of Eq. 2 against soft-encoded true colours."""

    num_views = 2  # the gray input and its ab target

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        size = int(cfg.data.image_size)
        self.target_size = max(1, size // 4)
        # Crop and flip only (the paper's augmentation): no colour jitter,
        # whose colours would become the targets, nor anything else.
        recipe = view_recipe_from_config(cfg, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
                                         rotation_p=0.0, crop_scale=tuple(m.crop_scale))
        self.recipe = ColorizationViews(recipe, cfg.data.mean, cfg.data.std, self.target_size)
        centres = ab_gamut_bins(10.0)
        # Derived deterministically, so not stored in checkpoints.
        self.register_buffer("centres", centres, persistent=False)
        # Estimated by fit_statistics; 1 (no rebalancing) until then. Stored,
        # so a resumed run's checkpoint has the weights it trained with.
        self.register_buffer("class_weights", torch.ones(len(centres)))
        self.last_stage = self.backbone.stage_names[-1]
        side = self._feature_side(size)
        upsamplings = max(0, round(math.log2(self.target_size / side)))
        self.colour_decoder = ColourDecoder(self.backbone.stage_dims[self.last_stage], m.decoder_width,
                                            len(centres), upsamplings, self.target_size)

    def _feature_side(self, size: int) -> int:
        """The side of the last stage's map for size x size inputs (8x smaller
        for a CIFAR-stem ResNet, 32x for the ImageNet stem)."""
        was_training = self.backbone.training
        self.backbone.eval()  # no BatchNorm statistics updated by this probe
        with torch.no_grad():
            side = self.backbone.feature_map(torch.zeros(1, 3, size, size), self.last_stage).shape[-1]
        self.backbone.train(was_training)
        return int(side)

    def colour_logits(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised gray inputs -> (Q bin logits at the target resolution,
        the pooled backbone features)."""
        feature_map = self.backbone.feature_map(inputs, self.last_stage)
        return self.colour_decoder(feature_map), torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        m = self.cfg.method
        inputs, ab = views
        logits, features = self.colour_logits(inputs)
        targets = soft_encode(ab.float(), self.centres, m.neighbours, m.sigma)
        loss = rebalanced_cross_entropy(logits, targets, self.class_weights)
        # The share of pixels whose most likely predicted bin is their true colour's.
        accuracy = (logits.argmax(1) == targets.argmax(1)).float().mean() * 100
        return SSLStepOutput(loss=loss, features=features, logs={"pixel_top1": accuracy.detach()})

    def fit_statistics(self, images: ImageSet) -> None:
        """The class-rebalancing weights (Eq. 3-4) from the ab bin distribution
        of up to `statistics_images` training images, evenly spaced over the
        set, whole (not cropped), at the targets' resolution."""
        m = self.cfg.method
        count = min(int(m.statistics_images), len(images))
        if count <= 0:
            return
        size = int(self.cfg.data.image_size)
        chosen = (torch.arange(count) * len(images)) // count  # evenly spaced, deterministic

        def ab_batches():
            for batch_indices in chosen.split(STATISTICS_BATCH):
                if images.images is not None:
                    batch = images.images[batch_indices]
                else:  # decoded one by one; sizes may differ until resized
                    batch = torch.stack([resize_center_crop(images.image(int(i)), size) for i in batch_indices])
                rgb = resize_center_crop(to_unit_float(batch), size).clamp(0.0, 1.0)
                yield downsampled_ab(rgb_to_lab(rgb), self.target_size)

        centres = self.centres.cpu()
        distribution = empirical_bin_distribution(ab_batches(), centres)
        weights = rebalancing_weights(distribution, centres, m.rebalance_lambda, m.sigma)
        self.class_weights.copy_(weights)
        log.info("colorization: class-rebalancing weights from %d images: %d of %d bins never nearest, "
                 "weights %.3f to %.3f", count, int((distribution == 0).sum()), len(centres),
                 float(weights.min()), float(weights.max()))

    def save_artifacts(self, out_dir: Path, images: Tensor) -> List[str]:
        """A grid of the images' gray inputs (row 1), their predicted colours
        (row 2: their L with the annealed-mean ab, upsampled bilinearly to the
        image's size, Sec. 2.2) and the true images (row 3)."""
        m = self.cfg.method
        size = int(self.cfg.data.image_size)
        with self.evaluating():
            rgb = resize_center_crop(to_unit_float(images), size).to(self.centres.device)
            inputs, _ = colorization_pair(rgb, self.cfg.data.mean, self.cfg.data.std, self.target_size)
            logits, _ = self.colour_logits(inputs)
            ab = annealed_mean(torch.softmax(logits.float(), dim=1), self.centres, m.annealed_temperature)
            ab = F.interpolate(ab, size=(size, size), mode="bilinear", align_corners=False)
            lightness = rgb_to_lab(rgb)[:, :1]
            predicted = lab_to_rgb(torch.cat([lightness, ab], dim=1))
            rows = torch.cat([gray_from_lightness(lightness), predicted, rgb])
        save_image_grid(rows, len(rgb), Path(out_dir) / GRID_FILE)
        return [GRID_FILE]


__all__ = ["Colorization", "ColorizationConfig", "ColorizationViews", "ColourDecoder", "colorization_pair",
           "downsampled_ab"]
