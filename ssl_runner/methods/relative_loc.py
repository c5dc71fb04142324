"""Context prediction: the relative location of two patches (Doersch, Gupta &
Efros, ICCV 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead
from ssl_runner.validation import check_choice
from ssl_runner.views.chromatic_guards import CHROMATIC_GUARDS
from ssl_runner.views.relative_location import NUM_LOCATIONS, SCALES, PatchPairs, RelativeLocationPairs


@dataclass
class RelativeLocConfig:
    name: str = "relative_loc"
    # Patch geometry preset of views/relative_location.py: "cifar" (32-px
    # images upsampled 3x: 22-px patches, gap 11, jitter 3), "cifar64" (2x:
    # 14-px patches, gap 7, jitter 2), "96px", "imagenet"
    # (the paper's 96-px patches, gap 48, jitter 7).
    scale: str = "cifar"
    # Against the chromatic-aberration shortcut (Sec. 4.2): "project" out the
    # green-magenta axis, or "drop_channels" (keep one, noise in the others).
    chromatic_guard: str = "project"
    # The classifier over the two towers' concatenated features (the paper:
    # fc7 of 4096 over 2 x fc6); 0: twice the backbone's feature width.
    hidden_dim: int = 512


@register_method("relative_loc", RelativeLocConfig, paper="Doersch et al., ICCV 2015",
                 published="no CIFAR-10 figure (ImageNet, AlexNet-style towers)", kind="pretext task")
class RelativeLoc(BaseMethod):
    """Siamese towers (the backbone on the centre patch and on one of its 8
    neighbours), their features concatenated, an MLP classifies where the
    neighbour lies (Sec. 3, Fig. 2 and 3)."""

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        check_choice("method.chromatic_guard", cfg.method.chromatic_guard, CHROMATIC_GUARDS)
        check_choice("method.scale", cfg.method.scale, list(SCALES))

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        pairs = RelativeLocationPairs.from_scale(m.scale, chromatic_guard=m.chromatic_guard)
        self.view_maker = PatchPairs(pairs, cfg.data.mean, cfg.data.std)
        self.classifier = MLPHead([2 * self.feature_dim, m.hidden_dim or 2 * self.feature_dim, NUM_LOCATIONS])

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        centre, neighbour, labels = views
        n = len(centre)
        h = self.backbone(torch.cat([centre, neighbour]))  # one shared tower
        logits = self.classifier(torch.cat([h[:n], h[n:]], dim=1))
        loss = F.cross_entropy(logits, labels.long())
        accuracy = (logits.argmax(1) == labels).float().mean() * 100
        return SSLStepOutput(loss=loss, features=h[:n], logs={"location_top1": accuracy.detach()})


__all__ = ["RelativeLoc"]
