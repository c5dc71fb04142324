"""RotNet: predicting image rotations (Gidaris, Singh, Komodakis; ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.views.recipe import view_recipe_from_config


@dataclass
class RotNetConfig:
    name: str = "rotnet"
    # Colour jitter and grayscale are not part of RotNet's recipe (Sec. 3:
    # the rotated copies are the only transformation); crop and flip of
    # `views` still apply. true: use `views` as configured.
    colour_augmentation: bool = False


def four_rotations(images: Tensor) -> tuple[Tensor, Tensor]:
    """All four copies of every image, rotated by 0, 90, 180 and 270 degrees
    counter-clockwise, exactly (rot90 is a transpose and a flip: no
    interpolation, Sec. 2.2), grouped by rotation; and their labels 0..3."""
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return rotated, labels


@register_method("rotnet", RotNetConfig, paper="Gidaris et al., ICLR 2018",
                 published="NIN block 2 + non-linear classifier 89.06; random init + conv 72.50",
                 kind="pretext task")
class RotNet(BaseMethod):
    """The backbone followed by a linear 4-way classifier, trained to tell
    which rotation an image went through. Every batch holds all four
    rotations of each image (Sec. 2.2: better than one random rotation per
    image, which is what VISSL does)."""

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        # One view per image (its four rotations are made in ssl_step).
        colour = {} if cfg.method.colour_augmentation else {"jitter_p": 0.0, "grayscale_p": 0.0}
        self.view_maker = view_recipe_from_config(cfg, num_views=1, **colour)
        self.rotation_classifier = nn.Linear(self.feature_dim, 4)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        images = views[0]
        rotated, labels = four_rotations(images)
        h = self.backbone(rotated)
        logits = self.rotation_classifier(h)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean() * 100
        # The online probe and monitors see the upright copies only.
        return SSLStepOutput(loss=loss, features=h[:len(images)], logs={"rotation_top1": accuracy.detach()})


__all__ = ["RotNet", "four_rotations"]
