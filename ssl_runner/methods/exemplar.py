"""Exemplar-CNN: every seed image its own class (Dosovitskiy, Springenberg,
Riedmiller, Brox; NIPS 2014, extended in TPAMI 2016)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.distributed import collectives
from ssl_runner.distributed.batch import batch_sizes
from ssl_runner.errors import UserError
from ssl_runner.methods.base import BaseMethod, PretrainImages, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead
from ssl_runner.views.exemplar import exemplar_recipe


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


@register_method("exemplar", ExemplarConfig, paper="Dosovitskiy et al., NIPS 2014",
                 published="CIFAR-10 84.3 (surrogate classes from STL-10 patches; SVM on pooled conv features)",
                 kind="instance classification")
class Exemplar(BaseMethod):
    """A softmax over N surrogate classes, one per seed image, on the
    backbone's features of randomly transformed seeds (Sec. 3). Pretraining
    iterates over the seeds only (`pretrain_images`); a batch's `indices`
    are positions among the seeds, i.e. the surrogate labels. kNN and the
    linear probe still use the whole training split."""

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        if num_samples not in (0, m.num_exemplars):
            raise ValueError(f"Exemplar-CNN is built for its {m.num_exemplars} seeds (the pretraining subset), "
                             f"got {num_samples} images")
        self.view_maker = exemplar_recipe(cfg)
        dims = [self.feature_dim] + ([m.hidden_dim] if m.hidden_dim > 0 else []) + [m.num_exemplars]
        self.classifier = nn.Linear(*dims) if len(dims) == 2 else MLPHead(dims)

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        m = cfg.method
        if m.num_exemplars < 1 or m.samples_per_exemplar < 1:
            raise UserError(f"method.num_exemplars ({m.num_exemplars}) and method.samples_per_exemplar "
                            f"({m.samples_per_exemplar}) must both be at least 1.")

    @classmethod
    def pretrain_images(cls, cfg: DictConfig, num_images: int) -> PretrainImages:
        """The seeds, each shown `samples_per_exemplar` times an epoch. The
        split's size and the global batch are known only here (the stage)."""
        m = cfg.method
        if m.num_exemplars > num_images:
            raise UserError(
                f"method.num_exemplars={m.num_exemplars} asks Exemplar-CNN for more seed images than the "
                f"training split holds ({num_images} images; data.subset={cfg.data.subset}): each seed is a "
                f"distinct training image. Lower method.num_exemplars to at most {num_images}, or train on more "
                f"images (raise or remove data.subset)."
            )
        per_step = batch_sizes(cfg, collectives.world_size()).per_step
        if m.num_exemplars * m.samples_per_exemplar < per_step:
            raise UserError(
                f"an Exemplar-CNN epoch ({m.num_exemplars} seeds x {m.samples_per_exemplar} samples each = "
                f"{m.num_exemplars * m.samples_per_exemplar}) is smaller than one step's batch on all devices "
                f"({per_step}), so it would hold no batch. Raise method.samples_per_exemplar or "
                f"method.num_exemplars, or lower data.batch_size (or data.global_batch_size)."
            )
        return PretrainImages(choose_exemplars(num_images, m.num_exemplars, cfg.seed), int(m.samples_per_exemplar))

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        h = self.backbone(views[0])
        logits = self.classifier(h)
        loss = F.cross_entropy(logits, indices)
        accuracy = (logits.argmax(1) == indices).float().mean() * 100
        return SSLStepOutput(loss=loss, features=h, logs={"surrogate_top1": accuracy.detach()})


__all__ = ["Exemplar", "ExemplarConfig", "choose_exemplars"]
