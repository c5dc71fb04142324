"""Context encoder: feature learning by inpainting (Pathak et al., CVPR 2016).

A region of each image is dropped (filled with the data mean); the backbone
encodes what is left, a decoder paints the whole image back, and the loss is
the squared error on the dropped region only (Eq. 1), optionally plus an
adversarial term from a discriminator that tells real images from completed
ones (Eq. 2 and 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.data.datasets import resize_center_crop
from ssl_runner.data.masks import MAX_MASKED_FRACTION, draw_mask, masked_l2_loss
from ssl_runner.data.views import normalize, to_unit_float
from ssl_runner.errors import UserError
from ssl_runner.methods.base import BaseMethod, SSLStepOutput, save_image_grid, view_recipe_from_config
from ssl_runner.methods.registry import register_method

GRID_FILE = "context_encoder_grid.png"
# The artifact grid's masks come from this seed: the same masks every run.
ARTIFACT_MASK_SEED = 0
# The decoder's blocks halve their width at each upsampling, down to this.
MIN_DECODER_WIDTH = 16
# Channels of the discriminator's first convolution (DCGAN's is 64 at 64 px;
# half of it suffices at CIFAR's 32 px and keeps the optional term cheap).
DISCRIMINATOR_WIDTH = 32


@dataclass
class ContextEncoderConfig:
    name: str = "context_encoder"
    # Which region is dropped (Sec. 3.3): "centre" (the central quarter),
    # "random_block" (a quarter-size block anywhere) or "random_region" (a
    # random shape of up to a quarter; data/masks.py). Random regions, as the
    # paper uses for all its feature-learning experiments (Sec. 3.3: random
    # blocks and regions give similar features, both much better than the
    # central region, whose fixed boundary the network learns to exploit).
    mask: str = "random_region"
    # A random region covers U(min_region_fraction, 1/4) of the image.
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
    # The discriminator's Adam (when adversarial_weight > 0): DCGAN's
    # settings (Radford et al. 2016, lr 2e-4, betas (0.5, 0.999)), the GAN
    # recipe the paper's adversarial term follows (Sec. 3.2).
    discriminator_lr: float = 2e-4
    # Area range of the random crop (the paper trains on whole resized
    # images; a mild crop and the flip are the only augmentation here).
    crop_scale: List[float] = field(default_factory=lambda: [0.6, 1.0])


class ContextEncoderConfigError(UserError, ValueError):
    """A context-encoder setting that cannot work: a ValueError for code that
    builds the method, a UserError (one paragraph, exit 2) for the CLI."""


class ChannelWiseFullyConnected(nn.Module):
    """Sec. 3.1: a fully-connected layer within each channel (C x hw x hw
    weights instead of a full layer's (C hw)^2): every output position of a
    channel sees every input position of that channel, which convolutions
    alone reach only over many layers. The paper follows it with a stride-1
    convolution to mix the channels (the decoder's first 1x1 convolution)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        positions = height * width
        bound = 1.0 / math.sqrt(positions)  # nn.Linear's initialisation, per channel
        self.weight = nn.Parameter(torch.empty(channels, positions, positions).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, positions).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        # One matrix product per channel, batched over the channels; made
        # contiguous first (a channels-last map makes a strided bmm 7x slower).
        per_channel = x.reshape(n, c, h * w).transpose(0, 1).contiguous()  # C x N x hw
        mixed = torch.baddbmm(self.bias.unsqueeze(1), per_channel, self.weight)  # C x N x hw
        return mixed.transpose(0, 1).reshape(n, c, h, w)


class InpaintingDecoder(nn.Module):
    """Encoder feature map (C x h x w) -> image (3 x size x size, in the
    normalised space of the inputs). The paper's decoder is up-convolutions
    (Sec. 3.1); here each 2x step is nearest upsampling then a 3x3 conv, BN
    and ReLU (resize-convolution: the same capacity without the checkerboard
    artefacts of strided transposed convolutions), the last step's conv
    giving RGB with no activation (normalised pixels are unbounded)."""

    def __init__(self, channels: int, height: int, width: int, image_size: int, decoder_width: int,
                 channel_wise_fc: bool = True) -> None:
        super().__init__()
        self.image_size = image_size
        layers: List[nn.Module] = []
        if channel_wise_fc:
            layers.append(ChannelWiseFullyConnected(channels, height, width))
        layers += [nn.Conv2d(channels, decoder_width, 1, bias=False), nn.BatchNorm2d(decoder_width),
                   nn.ReLU(inplace=True)]
        doublings = max(0, math.ceil(math.log2(image_size / min(height, width))))
        current = decoder_width
        for step in range(1, doublings):
            out = max(MIN_DECODER_WIDTH, decoder_width >> step)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(current, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            current = out
        # The last doubling paints the image directly, as DCGAN's generator's
        # last up-convolution (no block at full resolution: the costliest).
        if doublings:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers.append(nn.Conv2d(current, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, feature_map: Tensor) -> Tensor:
        image = self.net(feature_map)
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):  # a map side not a power-of-2 divisor
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return image


def build_discriminator(image_size: int, width: int = DISCRIMINATOR_WIDTH) -> nn.Sequential:
    """DCGAN's discriminator (Radford et al. 2016), as the paper's adversarial
    term uses (Sec. 3.2): 4x4 stride-2 convolutions, BatchNorm after all but
    the first, LeakyReLU 0.2, doubling the width (at most 512) until the map
    is at most 4 x 4, then one convolution over the whole map to a single
    logit per image (N x 1)."""
    layers: List[nn.Module] = []
    side, in_channels, out_channels = image_size, 3, width
    while side > 4:
        first = in_channels == 3
        layers.append(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=first))
        if not first:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        side //= 2
        in_channels, out_channels = out_channels, min(2 * out_channels, 512)
    layers += [nn.Conv2d(in_channels, 1, side), nn.Flatten()]
    return nn.Sequential(*layers)


def feature_map_shape(backbone: nn.Module, stage: str, image_size: int) -> Tuple[int, int, int]:
    """(channels, height, width) of `backbone.feature_map` at `stage` for
    image_size x image_size inputs, from one forward pass in eval mode (no
    BatchNorm statistics touched)."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            _, c, h, w = backbone.feature_map(torch.zeros(1, 3, image_size, image_size), stage).shape
    finally:
        backbone.train(was_training)
    return c, h, w


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """-log D(G(x)) averaged over the images: the non-saturating generator
    loss (Goodfellow et al. 2014), the usual form of Eq. 2's min over G."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-log D(x) - log(1 - D(G(x))), each averaged over its images: the
    discriminator's side of Eq. 2 (the standard GAN loss), real images label
    1, completed ones 0."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def _check_config(cfg: DictConfig) -> None:
    m = cfg.method
    if not 0.0 < m.min_region_fraction <= MAX_MASKED_FRACTION:
        raise ContextEncoderConfigError(
            f"config key 'method.min_region_fraction' is {m.min_region_fraction}; it must be in "
            f"(0, {MAX_MASKED_FRACTION}] (a random region covers between it and a quarter of the image).")
    if m.decoder_width < 1:
        raise ContextEncoderConfigError(f"config key 'method.decoder_width' is {m.decoder_width}; it must be positive.")
    for key in ("reconstruction_weight", "adversarial_weight"):
        if m[key] < 0:
            raise ContextEncoderConfigError(f"config key 'method.{key}' is {m[key]}; it must not be negative.")
    if m.adversarial_weight > 0:
        # Lightning refuses both with manual optimisation, which the
        # discriminator's own optimizer needs.
        if cfg.trainer.accumulate_grad_batches > 1:
            raise ContextEncoderConfigError(
                "method.adversarial_weight > 0 trains a discriminator with its own optimizer (manual optimisation), "
                f"which does not accumulate gradients, but trainer.accumulate_grad_batches is "
                f"{cfg.trainer.accumulate_grad_batches}. Set trainer.accumulate_grad_batches=1 (raise data.batch_size "
                "instead) or method.adversarial_weight=0.")
        if cfg.trainer.gradient_clip_val:
            raise ContextEncoderConfigError(
                "method.adversarial_weight > 0 trains a discriminator with its own optimizer (manual optimisation), "
                f"which Lightning cannot clip gradients for, but trainer.gradient_clip_val is "
                f"{cfg.trainer.gradient_clip_val}. Set trainer.gradient_clip_val=null or method.adversarial_weight=0.")


@register_method("context_encoder", ContextEncoderConfig, paper="Pathak et al., CVPR 2016",
                 published="no CIFAR-10 figure")
class ContextEncoder(BaseMethod):
    """The backbone (up to its last stage) is the encoder; the channel-wise
    fully-connected layer and an upsampling decoder paint the image from its
    unpooled map; the loss is `reconstruction_weight` x the squared error on
    the dropped region, plus, when `adversarial_weight` > 0, that weight x
    -log D(completed image).

    With the adversarial term the method owns a discriminator with its own
    Adam, and trains by Lightning's manual optimisation (`training_step`):
    the main optimizer never holds the discriminator, nor is it exported. One
    backward pass serves both players: the generator's term sees the
    discriminator through detached parameters (so it reaches the encoder and
    decoder only), the discriminator's loss sees detached completed images
    (so it reaches the discriminator only). That gives exactly the gradients
    of "step the encoder, then the discriminator on the detached
    reconstructions" and leaves every parameter one gradient per step, as
    DistributedDataParallel wants. Lightning counts each optimizer's step,
    so `trainer.global_step` advances by 2 per batch in that mode (the
    schedule is stepped per batch here, the logs count batches)."""

    num_views = 1
    not_exported = ("discriminator",)

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        _check_config(cfg)
        m = cfg.method
        # Crop and flip only: colour changes are not what inpainting is about,
        # and the paper uses none.
        self.recipe = view_recipe_from_config(cfg, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
                                              rotation_p=0.0, crop_scale=tuple(m.crop_scale))
        # The encoder is the whole backbone (its last stage), so the network
        # the evaluation stages load is the one trained here.
        self.encoder_stage = self.backbone.stage_names[-1]
        channels, height, width = feature_map_shape(self.backbone, self.encoder_stage, cfg.data.image_size)
        self.decoder = InpaintingDecoder(channels, height, width, cfg.data.image_size, m.decoder_width,
                                         m.channel_wise_fc)
        self.adversarial = m.adversarial_weight > 0
        self.discriminator: Optional[nn.Sequential] = None
        if self.adversarial:
            self.discriminator = build_discriminator(cfg.data.image_size)
            self.automatic_optimization = False
        # (real, completed) of the last ssl_step, detached: the discriminator's batch.
        self._discriminator_batch: Optional[Tuple[Tensor, Tensor]] = None

    # ---- the pretext task ---------------------------------------------------------
    def inpaint(self, images: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Normalised images and their mask -> (the context: images with the
        mask filled with 0, the data mean after normalisation, as the paper
        fills with the mean; the encoder's feature map of it; the decoder's
        full image)."""
        context = images.masked_fill(mask, 0.0)
        feature_map = self.backbone.feature_map(context, self.encoder_stage)
        return context, feature_map, self.decoder(feature_map)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        images = views[0]
        n, _, height, width = images.shape
        m = self.cfg.method
        mask = draw_mask(m.mask, n, height, width, m.min_region_fraction, device=images.device)
        _, feature_map, reconstruction = self.inpaint(images, mask)
        reconstruction_loss = masked_l2_loss(reconstruction, images, mask)
        loss = m.reconstruction_weight * reconstruction_loss
        logs = {"reconstruction_loss": reconstruction_loss.detach()}
        if self.adversarial:
            # The discriminator judges the reconstruction pasted into the dropped region (Sec. 3.2).
            completed = torch.where(mask, reconstruction, images)
            adversarial_loss = generator_adversarial_loss(self._judge_without_training(completed))
            loss = loss + m.adversarial_weight * adversarial_loss
            logs["adversarial_loss"] = adversarial_loss.detach()
            self._discriminator_batch = (images.detach(), completed.detach())
        # The online probe sees the pooled features of the masked input.
        return SSLStepOutput(loss=loss, features=feature_map.mean(dim=(-2, -1)), logs=logs)

    def _judge_without_training(self, images: Tensor) -> Tensor:
        """The discriminator's logits for `images` with its parameters detached:
        the gradient reaches the images (the generator), not the discriminator."""
        assert self.discriminator is not None
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, frozen, (images,))

    # ---- the adversarial term: manual optimisation --------------------------------
    def ssl_modules(self) -> Dict[str, nn.Module]:
        """All but the discriminator, which has its own optimizer."""
        return {name: module for name, module in super().ssl_modules().items() if name != "discriminator"}

    def configure_optimizers(self) -> Any:
        main = super().configure_optimizers()
        if not self.adversarial:
            return main
        assert self.discriminator is not None
        adam = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.method.discriminator_lr,
                                betas=(0.5, 0.999))
        return [main, {"optimizer": adam}]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        assert self.discriminator is not None
        main_optimizer, discriminator_optimizer = self.optimizers()
        total = super().training_step(batch, batch_idx)  # ssl_step, logs, the online probe
        real, completed = self._discriminator_batch
        self._discriminator_batch = None
        real_logits, fake_logits = self.discriminator(real), self.discriminator(completed)
        d_loss = discriminator_loss(real_logits, fake_logits)
        correct = (real_logits > 0).float().sum() + (fake_logits < 0).float().sum()
        sync = self.trainer.world_size > 1
        self.log("train/discriminator_loss", d_loss.detach(), on_step=False, on_epoch=True, batch_size=len(real),
                 sync_dist=sync)
        self.log("train/discriminator_top1", correct / (2 * len(real)) * 100, on_step=False, on_epoch=True,
                 batch_size=len(real), sync_dist=sync)
        main_optimizer.zero_grad()
        discriminator_optimizer.zero_grad()
        # One backward: `total` reaches no discriminator parameter, `d_loss` nothing else (see the class).
        self.manual_backward(total + d_loss)
        main_optimizer.step()
        self.lr_schedulers().step()
        self.after_optimizer_step()
        discriminator_optimizer.step()
        return total.detach()

    # ---- what the pretext task produces ----------------------------------------
    def save_artifacts(self, out_dir: Path, images: Tensor) -> List[str]:
        """`context_encoder_grid.png`: one column per image; rows: the masked
        input (the dropped region in the data mean), the reconstruction pasted
        into the region, the original. Masks of the configured kind from a
        fixed seed, so the same images get the same masks in every run."""
        cfg, m = self.cfg, self.cfg.method
        size = cfg.data.image_size
        device = next(self.parameters()).device
        x = normalize(to_unit_float(resize_center_crop(images, size)).to(device), cfg.data.mean, cfg.data.std)
        generator = torch.Generator().manual_seed(ARTIFACT_MASK_SEED)
        mask = draw_mask(m.mask, len(x), size, size, m.min_region_fraction, generator=generator).to(device)
        with self.evaluating():
            context, _, reconstruction = self.inpaint(x, mask)
            completed = torch.where(mask, reconstruction, x)
        mean = torch.tensor(list(cfg.data.mean), device=device).view(1, 3, 1, 1)
        std = torch.tensor(list(cfg.data.std), device=device).view(1, 3, 1, 1)
        save_image_grid(torch.cat([context, completed, x]).float() * std + mean, len(x), Path(out_dir) / GRID_FILE)
        return [GRID_FILE]


__all__ = ["ContextEncoder", "ContextEncoderConfig", "InpaintingDecoder", "ChannelWiseFullyConnected",
           "build_discriminator", "discriminator_loss", "generator_adversarial_loss"]
