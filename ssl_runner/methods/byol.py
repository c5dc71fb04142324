"""BYOL (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.losses import normalized_mse_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead
from ssl_runner.models.momentum import MomentumEncoder


@dataclass
class BYOLConfig:
    name: str = "byol"
    # Projector and predictor: Linear(4096)-BN-ReLU-Linear(256) (Sec. 3.3).
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    # Target EMA: tau from `momentum` up to 1 on a cosine over the steps (Sec. 3.2).
    momentum: float = 0.996
    momentum_schedule: str = "cosine"


@register_method("byol", BYOLConfig, paper="Grill et al., NeurIPS 2020",
                 published="online linear ≈ 92.6 (solo-learn, ResNet-18, 1000 ep); kNN 91.0 (lightly, 800 ep)",
                 kind="non-contrastive")
class BYOL(BaseMethod):
    """Online network (backbone, projector, predictor) predicts the target
    network's projection of the other view; the target is an EMA of the
    online backbone + projector. Loss: normalised MSE, symmetrised (Eq. 2)."""

    not_exported = ("target",)

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        self.projector = MLPHead([self.feature_dim, m.proj_hidden_dim, m.proj_output_dim])
        self.predictor = MLPHead([m.proj_output_dim, m.pred_hidden_dim, m.proj_output_dim])
        self.target = MomentumEncoder(self.encoder_with(self.projector))

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        x = torch.cat(views)
        h = self.backbone(x)
        z = self.projector(h)
        p1, p2 = self.predictor(z).chunk(2)
        t1, t2 = self.target(x).chunk(2)
        loss = normalized_mse_loss(p1, t2) + normalized_mse_loss(p2, t1)
        return SSLStepOutput(loss=loss, features=h, embeddings=z.chunk(2)[0],
                             logs={"target_momentum": torch.tensor(self.ema_momentum())})

    def momentum_pairs(self) -> List[Tuple[nn.Module, MomentumEncoder]]:
        return [(self.encoder_with(self.projector), self.target)]
