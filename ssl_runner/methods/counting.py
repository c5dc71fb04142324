"""Counting visual primitives (Noroozi, Pirsiavash & Favaro, ICCV 2017)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.losses import counting_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.views.recipe import view_recipe_from_config


@dataclass
class CountingConfig:
    name: str = "counting"
    # Length of the count vector phi(x) (Sec. 4: 1,000, the ReLU outputs of the last layer).
    count_dim: int = 1000
    # A hidden layer between the backbone's features and the counts (0: none,
    # the counts are one linear map and a ReLU of the features).
    hidden_dim: int = 0
    # M of the contrastive term (Eq. 5: 10).
    margin: float = 10.0
    # Colour jitter and grayscale of `views` on x (and so on D(x) and its
    # tiles alike): without them, colour statistics alone tell images apart in
    # the contrastive term. false: crop and flip only.
    colour_augmentation: bool = True
    # Area range of the random crop x is taken from (instead of views.crop_scale).
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    # Interpolations D(x) is downsampled and phi's inputs upsampled with, each
    # drawn per batch (Sec. 4: the downsampling method is drawn at random, so
    # that its artefacts cannot tell a tile from a whole image).
    interpolations: List[str] = field(default_factory=lambda: ["bilinear", "bicubic", "area"])


# The choices of `method.interpolations` (modes of F.interpolate).
INTERPOLATIONS = ("bilinear", "bicubic", "area", "nearest")


def _resize(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    smooth = mode in ("bilinear", "bicubic")
    shrinking = images.shape[-1] > size[-1]
    return F.interpolate(images, size=size, mode=mode, **({"align_corners": False, "antialias": shrinking}
                                                          if smooth else {}))


def counting_inputs(images: Tensor, down_mode: str = "bilinear", up_mode: str = "bilinear") -> Tensor:
    """The five inputs of phi for each of N x C x S x S images: D(x), x
    downsampled 2x (with `down_mode`), and the four tiles T_1..T_4 (top left,
    top right, bottom left, bottom right quarters at the image's own
    resolution), as in the paper (D halves 228 px to 114; the tiles are 114-px
    quarters). All five, at S/2 px, are then upsampled to S px with
    `up_mode`: phi sees inputs of the size the evaluation stages give it,
    whole images (D(x)) at their own scale, and every input has gone through
    the same resampling, so sharpness cannot tell a tile from a whole image.
    5N images, input-major: rows 0..N-1 are D(x), rows (j+1)N..(j+2)N - 1
    tile j of every image."""
    height, width = images.shape[-2:]
    h, w = height // 2, width // 2
    small = torch.cat([_resize(images, (h, w), down_mode), images[..., :h, :w], images[..., :h, w:2 * w],
                       images[..., h:2 * h, :w], images[..., h:2 * h, w:2 * w]])
    return _resize(small, (height, width), up_mode)


@register_method("counting", CountingConfig, paper="Noroozi et al., ICCV 2017",
                 published="no CIFAR-10 figure", kind="pretext task")
class Counting(BaseMethod):
    """phi = the backbone, then a map to non-negative "counts" of visual
    primitives. The counts of a whole image must equal the sum of the counts
    of its four tiles (counting is additive over a partition), and differ
    from those of another image by at least M (Eq. 5).

    Geometry (`counting_inputs`): the paper's D halves a 228-px image to
    114 px and its tiles are 114-px quarters. The same here, then all five
    upsampled back to data.image_size, so that the evaluation stages see
    whole images at the scale of D(x). Upsampling only the tiles (a first
    version) let blur tell tiles from whole images: the loss fell below M
    while kNN fell below the random encoder's. The other image y of Eq. 5
    is the next image of the batch."""

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        interpolations = [str(i) for i in cfg.method.interpolations]
        if not interpolations or any(i not in INTERPOLATIONS for i in interpolations):
            raise UserError(f"config key 'method.interpolations' is {interpolations}; it needs one or more of: "
                            f"{', '.join(INTERPOLATIONS)} (e.g. method.interpolations=[bilinear,bicubic]).")

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        colour = {} if m.colour_augmentation else {"jitter_p": 0.0, "grayscale_p": 0.0}
        self.view_maker = view_recipe_from_config(cfg, num_views=1, crop_scale=tuple(m.crop_scale), **colour)
        layers: List[nn.Module] = []
        width = self.feature_dim
        if m.hidden_dim:
            layers += [nn.Linear(width, m.hidden_dim), nn.ReLU(inplace=True)]
            width = m.hidden_dim
        # No BatchNorm in the head: it would centre the counts over the batch,
        # which breaks their additivity over tiles.
        self.count_head = nn.Sequential(*layers, nn.Linear(width, m.count_dim), nn.ReLU())

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        m = self.cfg.method
        x = views[0]
        n = len(x)
        down, up = (str(m.interpolations[int(i)]) for i in torch.randint(len(m.interpolations), (2,)))
        h = self.backbone(counting_inputs(x, down, up))  # one pass: D(x) and the 4 tiles of each image
        counts = self.count_head(h)
        whole, tiles_sum = counts[:n], counts[n:].view(4, n, -1).sum(0)
        # y: the next image of the batch (any other image will do, Sec. 3.2).
        loss = counting_loss(whole, whole.roll(1, dims=0), tiles_sum, m.margin)
        residual = (whole - tiles_sum).pow(2).sum(1).mean().detach()
        return SSLStepOutput(loss=loss, features=h[:n], embeddings=whole,
                             logs={"count_residual": residual, "count_norm": whole.norm(dim=1).mean().detach()})


__all__ = ["Counting", "counting_inputs"]
