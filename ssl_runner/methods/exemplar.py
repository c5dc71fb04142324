"""Exemplar-CNN: every seed image its own class (Dosovitskiy, Springenberg,
Riedmiller, Brox; NIPS 2014, extended in TPAMI 2016)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner import distributed
from ssl_runner.data.views import (
    HorizontalFlip,
    HSVPower,
    PrincipalComponentScaling,
    RandomResizedCrop,
    RandomRotation,
    ViewRecipe,
)
from ssl_runner.errors import UserError
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead


@dataclass
class ExemplarConfig:
    name: str = "exemplar"
    # N seed images, each its own surrogate class (Sec. 2; Sec. 4.3: more
    # classes help up to about 8,000, sampled from STL-10's unlabelled set).
    # Drawn from the training split without labels, seeded by the run's seed.
    num_exemplars: int = 8000
    # Times each seed is shown per pretraining epoch, each time freshly
    # transformed: an epoch is num_exemplars x this many samples. The paper
    # draws K fixed samples per class once (Sec. 2, Sec. 4.3) and trains on
    # them repeatedly; here every showing is a new draw.
    samples_per_exemplar: int = 8
    # The paper's transformations (Sec. 2), each drawn per sample:
    # "translation" (up to 0.2 of the patch size) and "scaling" (0.7 - 1.4):
    # a square random crop of this area range, resized to the image size. An
    # area of 0.5 - 1 is a zoom of 1 - 1.4 with shifts of up to 0.2 of the
    # crop's side; zooming out (0.7 - 1) would need context from outside the
    # image, which a whole image (unlike the paper's patches) lacks.
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    # "rotation": by an angle of up to 20 degrees (bilinear, reflected corners).
    rotation_degrees: float = 20.0
    # "contrast 1": the projections of the pixels on their principal
    # components each multiplied by a factor in [0.5, 2].
    pca_factor: List[float] = field(default_factory=lambda: [0.5, 2.0])
    # "contrast 2": saturation and value raised to a power in [0.25, 4],
    # multiplied by a factor in [0.7, 1.4], plus an offset in [-0.1, 0.1].
    hsv_power: List[float] = field(default_factory=lambda: [0.25, 4.0])
    hsv_factor: List[float] = field(default_factory=lambda: [0.7, 1.4])
    hsv_offset: float = 0.1
    # "color": a hue shift in [-0.1, 0.1] of a turn.
    hue_shift: float = 0.1
    # Not in the paper's list; mirror images are the same object. 0: the paper's family exactly.
    hflip_p: float = 0.5
    # 0: a linear classifier over the backbone's features h; > 0: the
    # paper's fully connected layer of that width first (Sec. 4.1: 128, 512
    # or 1024 before the softmax; here with BatchNorm and ReLU, no dropout).
    hidden_dim: int = 0


def choose_exemplars(num_images: int, num_exemplars: int, seed: int) -> Tensor:
    """The seeds: `num_exemplars` distinct indices in [0, num_images), sorted,
    drawn uniformly (labels unused) from a generator of its own seeded by
    `seed`, so the global RNG state, the rank and a restart change nothing."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_images, generator=generator)[:num_exemplars].sort().values


def exemplar_recipe(cfg: DictConfig) -> ViewRecipe:
    """The strong random transformation of Sec. 2, one fresh draw per sample."""
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
    return ViewRecipe(augmentations, list(d.mean), list(d.std))


@register_method("exemplar", ExemplarConfig, paper="Dosovitskiy et al., NIPS 2014",
                 published="CIFAR-10 84.3 (surrogate classes from STL-10 patches; SVM on pooled conv features)")
class Exemplar(BaseMethod):
    """A softmax over N surrogate classes, one per seed image, on the
    backbone's features of randomly transformed seeds (Sec. 3). Pretraining
    iterates over the seeds only (`pretrain_subset`); a batch's `indices`
    are positions among the seeds, i.e. the surrogate labels. kNN and the
    linear probe still use the whole training split."""

    num_views = 1

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        if num_samples not in (0, m.num_exemplars):
            raise ValueError(f"Exemplar-CNN is built for its {m.num_exemplars} seeds (the pretraining subset), "
                             f"got {num_samples} images")
        self.recipe = exemplar_recipe(cfg)
        dims = [self.feature_dim] + ([m.hidden_dim] if m.hidden_dim > 0 else []) + [m.num_exemplars]
        self.classifier = nn.Linear(*dims) if len(dims) == 2 else MLPHead(dims)

    @classmethod
    def pretrain_subset(cls, cfg: DictConfig, num_images: int) -> Optional[Tensor]:
        m = cfg.method
        if m.num_exemplars < 1 or m.samples_per_exemplar < 1:
            raise UserError(f"method.num_exemplars ({m.num_exemplars}) and method.samples_per_exemplar "
                            f"({m.samples_per_exemplar}) must both be at least 1.")
        if m.num_exemplars > num_images:
            raise UserError(
                f"method.num_exemplars={m.num_exemplars} asks Exemplar-CNN for more seed images than the "
                f"training split holds ({num_images} images; data.subset={cfg.data.subset}): each seed is a "
                f"distinct training image. Lower method.num_exemplars to at most {num_images}, or train on more "
                f"images (raise or remove data.subset)."
            )
        global_batch = cfg.data.batch_size * distributed.world_size()
        if m.num_exemplars * m.samples_per_exemplar < global_batch:
            raise UserError(
                f"an Exemplar-CNN epoch ({m.num_exemplars} seeds x {m.samples_per_exemplar} samples each = "
                f"{m.num_exemplars * m.samples_per_exemplar}) is smaller than the global batch ({global_batch}), "
                f"so it would hold no batch. Raise method.samples_per_exemplar or method.num_exemplars, or lower "
                f"data.batch_size."
            )
        return choose_exemplars(num_images, m.num_exemplars, cfg.seed)

    @classmethod
    def pretrain_repeats(cls, cfg: DictConfig) -> int:
        return int(cfg.method.samples_per_exemplar)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        h = self.backbone(views[0])
        logits = self.classifier(h)
        loss = F.cross_entropy(logits, indices)
        accuracy = (logits.argmax(1) == indices).float().mean() * 100
        return SSLStepOutput(loss=loss, features=h, logs={"surrogate_top1": accuracy.detach()})


__all__ = ["Exemplar", "ExemplarConfig", "choose_exemplars", "exemplar_recipe"]
