"""SimSiam (Chen & He, CVPR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.losses import negative_cosine_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead


@dataclass
class SimSiamConfig:
    name: str = "simsiam"
    # Projector f's MLP: Linear-BN-ReLU blocks, the output Linear-BN (Sec. 4.4;
    # 3 layers on ImageNet, 2 on CIFAR, Appendix).
    proj_layers: int = 2
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    # Predictor h: the 512-d bottleneck of Sec. 4.4.
    pred_hidden_dim: int = 512
    # The predictor's lr is not decayed (Sec. 4.4: "fixed lr works better").
    fixed_predictor_lr: bool = True
    # Off only to show the collapse of Sec. 4.1.
    stop_gradient: bool = True


@register_method("simsiam", SimSiamConfig, paper="Chen & He, CVPR 2021",
                 published="linear 91.8 (ResNet-18, 800 ep)", kind="non-contrastive")
class SimSiam(BaseMethod):
    """Two views, a shared encoder + projector, a predictor on one side, and
    the symmetrised negative cosine against the stop-gradient of the other
    side: L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2 (Eq. 4)."""

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        dims = [self.feature_dim] + [m.proj_hidden_dim] * (m.proj_layers - 1) + [m.proj_output_dim]
        self.projector = MLPHead(dims, last_bn=True)
        self.predictor = MLPHead([m.proj_output_dim, m.pred_hidden_dim, m.proj_output_dim])

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        h = self.backbone(torch.cat(views))
        z = self.projector(h)
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        if self.cfg.method.stop_gradient:
            loss = 0.5 * negative_cosine_loss(p1, z2) + 0.5 * negative_cosine_loss(p2, z1)
        else:
            loss = -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
        return SSLStepOutput(loss=loss, features=h, embeddings=z1)

    def param_groups(self, weight_decay: float) -> List[Dict[str, Any]]:
        groups = super().param_groups(weight_decay)
        if self.cfg.method.fixed_predictor_lr:
            for group in groups:
                if group.get("name", "").startswith("predictor"):
                    group["fixed_lr"] = True
        return groups
