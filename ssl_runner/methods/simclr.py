"""SimCLR (Chen, Kornblith, Norouzi, Hinton; ICML 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.losses import nt_xent_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead


@dataclass
class SimCLRConfig:
    name: str = "simclr"
    temperature: float = 0.5
    # Hidden width of g; null = the backbone's feature width, as in the paper.
    proj_hidden_dim: Optional[int] = None
    proj_output_dim: int = 128


@register_method("simclr", SimCLRConfig, paper="Chen et al., ICML 2020",
                 published="linear 91.1 (ResNet-18, 800 ep)", kind="contrastive")
class SimCLR(BaseMethod):
    """Two views per image, encoder f, MLP head g to 128-d, NT-Xent (Sec. 2.1).

    Both views go through the backbone as one batch, as in the official code,
    so BatchNorm sees 2N images. Evaluation uses h = f(x), not z = g(h)
    (Sec. 4.2: h keeps information that g removes).
    """

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        hidden = cfg.method.proj_hidden_dim or self.feature_dim
        self.projector = MLPHead([self.feature_dim, hidden, cfg.method.proj_output_dim])

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        h = self.backbone(torch.cat(views))
        z1, z2 = self.projector(h).chunk(2)
        loss = nt_xent_loss(z1, z2, self.cfg.method.temperature)
        return SSLStepOutput(loss=loss, features=h, embeddings=z1)
