"""Colorization: predicting the colours of a grayscale image (Zhang, Isola &
Efros, "Colorful Image Colorization", ECCV 2016).

The network sees only the lightness L of an image and predicts, for each
pixel of a map at a quarter of the input resolution, a distribution over the
Q quantised in-gamut ab bins; it is trained with a class-rebalanced
multinomial cross-entropy against soft-encoded true colours (Sec. 2.1).
Views: views/colorization.py; colour space and bins: views/lab.py and
views/ab_bins.py; the loss: losses/colorization.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.data.datasets import ImageSet, resize_center_crop
from ssl_runner.losses import rebalanced_cross_entropy, rebalancing_weights
from ssl_runner.image_grids import evaluating, save_image_grid
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.backbones import feature_map_shape
from ssl_runner.models.decoders import ColourDecoder
from ssl_runner.views.ab_bins import ab_gamut_bins, annealed_mean, empirical_bin_distribution, soft_encode
from ssl_runner.views.colorization import ColorizationViews, colorization_pair, downsampled_ab
from ssl_runner.views.lab import gray_from_lightness, lab_to_rgb, rgb_to_lab
from ssl_runner.views.pixels import to_unit_float
from ssl_runner.views.recipe import view_recipe_from_config

log = logging.getLogger(__name__)

GRID_FILE = "colorization_grid.png"
# Images converted to Lab per batch when estimating the bin distribution.
STATISTICS_BATCH = 500


@dataclass
class ColorizationConfig:
    name: str = "colorization"
    # Soft encoding of the true ab (Sec. 2.1): the 5 nearest bins, weighted by a Gaussian (sigma 5) of their distance.
    neighbours: int = 5
    sigma: float = 5.0
    # Class rebalancing (Eq. 4): w ~ ((1 - lambda) p~ + lambda / Q)^-1, p~ the bin distribution smoothed
    # with a Gaussian of sigma 5 (the same `sigma`); lambda = 1 turns rebalancing off.
    rebalance_lambda: float = 0.5
    # The annealed mean's temperature (Sec. 2.2), for the saved colour grid only.
    annealed_temperature: float = 0.38
    # Training images the bin distribution p is estimated from, evenly spaced (0: no estimate, every weight 1).
    statistics_images: int = 5000
    # Channels of the decoder's conv blocks (the paper's conv8: 256).
    decoder_width: int = 128
    # Area range of the random crop, instead of views.crop_scale. The paper crops 224 of 256 px (77 % of
    # the area, no scale jitter); a moderate range around it adds scale augmentation without cropping to
    # a patch whose colours lack their context.
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])


@register_method("colorization", ColorizationConfig, paper="Zhang et al., ECCV 2016", published="no CIFAR-10 figure", kind="generative pretext task")
class Colorization(BaseMethod):
    """The backbone on the lightness of an image, to its last stage (the whole encoder the evaluation
    stages use is trained), then a small decoder to Q ab-bin logits per pixel at a quarter of the input
    resolution (56 from 224, 8 from 32), trained with the class-rebalanced cross-entropy of Eq. 2
    against soft-encoded true colours."""

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        size = int(cfg.data.image_size)
        self.target_size = max(1, size // 4)
        # Crop and flip only (the paper's augmentation): jittered colours would become the targets.
        recipe = view_recipe_from_config(cfg, num_views=1, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
                                         rotation_p=0.0, crop_scale=tuple(m.crop_scale))
        self.view_maker = ColorizationViews(recipe, cfg.data.mean, cfg.data.std, self.target_size)
        centres = ab_gamut_bins(10.0)
        # Derived deterministically, so not stored in checkpoints.
        self.register_buffer("centres", centres, persistent=False)
        # From fit_statistics; 1 (no rebalancing) until then. Stored: a resumed run keeps its weights.
        self.register_buffer("class_weights", torch.ones(len(centres)))
        self.last_stage = self.backbone.stage_names[-1]
        channels, _, side = feature_map_shape(self.backbone, self.last_stage, size)
        self.colour_decoder = ColourDecoder(channels, m.decoder_width, len(centres), side, self.target_size)

    def colour_logits(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised gray inputs -> (Q bin logits at the target resolution,
        the pooled backbone features)."""
        feature_map = self.backbone.feature_map(inputs, self.last_stage)
        return self.colour_decoder(feature_map), torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        (inputs, ab), m = views, self.cfg.method
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
        m, size = self.cfg.method, int(self.cfg.data.image_size)
        count = min(int(m.statistics_images), len(images))
        if count <= 0:
            return
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
        m, size = self.cfg.method, int(self.cfg.data.image_size)
        with evaluating(self):
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


__all__ = ["Colorization", "ColorizationConfig"]
