"""Context encoder: feature learning by inpainting (Pathak et al., CVPR 2016).

A region of each image is dropped (filled with the data mean); the backbone
encodes what is left, a decoder paints the whole image back, and the loss is
the squared error on the dropped region only (Eq. 1), optionally plus an
adversarial term from a discriminator of real and completed images (Eq. 2, 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.data.datasets import resize_center_crop
from ssl_runner.errors import UserError
from ssl_runner.image_grids import evaluating, save_image_grid
from ssl_runner.losses import masked_l2_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.backbones import feature_map_shape
from ssl_runner.models.decoders import InpaintingDecoder
from ssl_runner.models.discriminator import TrainsDiscriminator
from ssl_runner.validation import check_choice
from ssl_runner.views.masks import MASK_KINDS, MAX_MASKED_FRACTION, draw_mask
from ssl_runner.views.pixels import normalize, to_unit_float
from ssl_runner.views.recipe import view_recipe_from_config

GRID_FILE = "context_encoder_grid.png"
# The artifact grid's masks come from this seed: the same masks every run.
ARTIFACT_MASK_SEED = 0


@dataclass
class ContextEncoderConfig:
    name: str = "context_encoder"
    # Which region is dropped (Sec. 3.3): "centre" (the central quarter),
    # "random_block" (a quarter-size block anywhere) or "random_region" (a
    # random shape covering U(min_region_fraction, 1/4) of the image;
    # views/masks.py). Random regions, as the paper uses for all its
    # feature-learning experiments (Sec. 3.3: random blocks and regions give
    # similar features, both much better than the central region, whose
    # fixed boundary the network learns to exploit).
    mask: str = "random_region"
    min_region_fraction: float = 0.1
    # Channels of the decoder's first block, halved at each 2x upsampling
    # (down to 16) until the image size.
    decoder_width: int = 64
    # The paper's channel-wise fully-connected layer between encoder and
    # decoder (Sec. 3.1): each channel's map fully connected to itself, so
    # every position of the decoder's input sees the whole context.
    channel_wise_fc: bool = True
    # lambda_rec and lambda_adv of the joint loss (Eq. 4). The paper: 0.999
    # and 0.001 with the adversarial term (Sec. 4), and the reconstruction
    # loss alone for its feature-learning results (Sec. 5.2), the default.
    reconstruction_weight: float = 1.0
    adversarial_weight: float = 0.0
    # The discriminator's Adam (when adversarial_weight > 0): DCGAN's lr 2e-4 and betas
    # (0.5, 0.999) (Radford et al. 2016), the recipe the paper's adversarial term follows (Sec. 3.2).
    discriminator_lr: float = 2e-4
    # Area range of the random crop (the paper trains on whole resized
    # images; a mild crop and the flip are the only augmentation here).
    crop_scale: List[float] = field(default_factory=lambda: [0.6, 1.0])


@register_method("context_encoder", ContextEncoderConfig, paper="Pathak et al., CVPR 2016",
                 published="no CIFAR-10 figure", kind="generative pretext task")
class ContextEncoder(TrainsDiscriminator, BaseMethod):
    """The backbone (up to its last stage) is the encoder; the channel-wise
    fully-connected layer and an upsampling decoder paint the image from its
    unpooled map; the loss is `reconstruction_weight` x the squared error on
    the dropped region, plus, when `adversarial_weight` > 0, that weight x
    -log D(completed image) (the discriminator: `TrainsDiscriminator`)."""

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        m = cfg.method
        check_choice("method.mask", m.mask, MASK_KINDS)
        if not 0.0 < m.min_region_fraction <= MAX_MASKED_FRACTION:
            raise UserError(
                f"config key 'method.min_region_fraction' is {m.min_region_fraction}; it must be in "
                f"(0, {MAX_MASKED_FRACTION}] (a random region covers between it and a quarter of the image).")
        if m.decoder_width < 1:
            raise UserError(f"config key 'method.decoder_width' is {m.decoder_width}; it must be positive.")
        for key in ("reconstruction_weight", "adversarial_weight"):
            if m[key] < 0:
                raise UserError(f"config key 'method.{key}' is {m[key]}; it must not be negative.")
        if m.adversarial_weight > 0:
            cls.check_discriminator_training(cfg)

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        # Crop and flip only: the paper uses no colour changes.
        self.view_maker = view_recipe_from_config(cfg, num_views=1, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
                                                  solarize_p=0.0, rotation_p=0.0, crop_scale=tuple(m.crop_scale))
        # The whole backbone is the encoder: the evaluation stages load the network trained here.
        self.encoder_stage = self.backbone.stage_names[-1]
        channels, height, width = feature_map_shape(self.backbone, self.encoder_stage, cfg.data.image_size)
        self.decoder = InpaintingDecoder(channels, height, width, cfg.data.image_size, m.decoder_width,
                                         m.channel_wise_fc)
        self.init_discriminator(m.adversarial_weight > 0, cfg.data.image_size)

    def inpaint(self, images: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Normalised images and their mask -> (the context: the images with the
        mask at 0, the data mean after normalisation, as the paper fills it;
        the encoder's feature map of it; the decoder's full image)."""
        context = images.masked_fill(mask, 0.0)
        feature_map = self.backbone.feature_map(context, self.encoder_stage)
        return context, feature_map, self.decoder(feature_map)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        images, m = views[0], self.cfg.method
        n, _, height, width = images.shape
        mask = draw_mask(m.mask, n, height, width, m.min_region_fraction, device=images.device)
        _, feature_map, reconstruction = self.inpaint(images, mask)
        reconstruction_loss = masked_l2_loss(reconstruction, images, mask)
        loss = m.reconstruction_weight * reconstruction_loss
        logs = {"reconstruction_loss": reconstruction_loss.detach()}
        if self.adversarial:
            # The discriminator judges the reconstruction pasted into the dropped region (Sec. 3.2).
            adversarial_loss = self.generator_loss(images, torch.where(mask, reconstruction, images))
            loss = loss + m.adversarial_weight * adversarial_loss
            logs["adversarial_loss"] = adversarial_loss.detach()
        # The online probe sees the pooled features of the masked input.
        return SSLStepOutput(loss=loss, features=feature_map.mean(dim=(-2, -1)), logs=logs)

    def save_artifacts(self, out_dir: Path, images: Tensor) -> List[str]:
        """`context_encoder_grid.png`, a column per image: the masked input (the region in the data mean),
        the reconstruction pasted into the region, the original; masks of the configured kind from a fixed
        seed, so the same images get the same masks in every run."""
        cfg, m, size = self.cfg, self.cfg.method, self.cfg.data.image_size
        device = next(self.parameters()).device
        x = normalize(to_unit_float(resize_center_crop(images, size)).to(device), cfg.data.mean, cfg.data.std)
        generator = torch.Generator().manual_seed(ARTIFACT_MASK_SEED)
        mask = draw_mask(m.mask, len(x), size, size, m.min_region_fraction, generator=generator).to(device)
        with evaluating(self):
            context, _, reconstruction = self.inpaint(x, mask)
            completed = torch.where(mask, reconstruction, x)
        mean = torch.tensor(list(cfg.data.mean), device=device).view(1, 3, 1, 1)
        std = torch.tensor(list(cfg.data.std), device=device).view(1, 3, 1, 1)
        save_image_grid(torch.cat([context, completed, x]).float() * std + mean, len(x), Path(out_dir) / GRID_FILE)
        return [GRID_FILE]


__all__ = ["ContextEncoder", "ContextEncoderConfig"]
