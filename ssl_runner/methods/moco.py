"""MoCo v1 (He et al., CVPR 2020) and v2 (Chen et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.losses import info_nce_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.heads import MLPHead
from ssl_runner.models.momentum import KeyQueue, MomentumEncoder, shuffled_bn_keys


@dataclass
class MoCoConfig:
    name: str = "mocov2"
    # Defaults: the official CIFAR-10 demo (queue 4,096, m 0.99, tau 0.1,
    # symmetric loss); ImageNet: 65,536, 0.999, 0.07 (v1) / 0.2 (v2), asymmetric.
    temperature: float = 0.1
    queue_size: int = 4096
    momentum: float = 0.99
    momentum_schedule: str = "constant"
    # v1: a linear head to 128-d; v2: Linear(d, d)-ReLU-Linear(d, 128) (no BN).
    mlp_head: bool = True
    proj_hidden_dim: int = 0  # 0: the backbone's feature width
    proj_output_dim: int = 128
    # Both views serve as query in turn (the CIFAR demo); false: view 1 only.
    symmetric: bool = True
    # Shuffling BN (Sec. 3.3): keys are encoded in a shuffled order, across
    # ranks with several processes, and on one device in this many separately
    # normalised groups, so BatchNorm cannot pair a query with its key.
    shuffle_bn_splits: int = 8


@register_method("mocov2", MoCoConfig, paper="Chen et al., arXiv 2020",
                 published="kNN 89.7, linear 90.7 (official CIFAR demo, ResNet-18, 800 ep)",
                 kind="momentum contrastive")
class MoCo(BaseMethod):
    """Query encoder (backbone + head), momentum key encoder, a queue of keys,
    InfoNCE with the positive at index 0."""

    not_exported = ("key_encoder", "queue")

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        m = cfg.method
        hidden = m.proj_hidden_dim or self.feature_dim
        dims = [self.feature_dim, hidden, m.proj_output_dim] if m.mlp_head else [self.feature_dim, m.proj_output_dim]
        self.projector = MLPHead(dims, hidden_bn=False)
        self.key_encoder = MomentumEncoder(self.encoder_with(self.projector))
        self.queue = KeyQueue(m.queue_size, m.proj_output_dim)

    def keys(self, x: Tensor) -> Tensor:
        return shuffled_bn_keys(self.key_encoder, x, self.cfg.method.shuffle_bn_splits)

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        m = self.cfg.method
        x1, x2 = views
        h = self.backbone(torch.cat(views) if m.symmetric else x1)
        q = self.projector(h)
        k2 = self.keys(x2)
        queue = self.queue.keys.clone()
        if m.symmetric:
            q1, q2 = q.chunk(2)
            k1 = self.keys(x1)
            loss = 0.5 * (info_nce_loss(q1, k2, queue, m.temperature) + info_nce_loss(q2, k1, queue, m.temperature))
            new_keys = torch.cat([k1, k2])
        else:
            loss = info_nce_loss(q, k2, queue, m.temperature)
            new_keys = k2
        self.queue.enqueue(new_keys)
        return SSLStepOutput(loss=loss, features=h, embeddings=q)

    def momentum_pairs(self) -> List[Tuple[nn.Module, MomentumEncoder]]:
        return [(self.encoder_with(self.projector), self.key_encoder)]


@dataclass
class MoCoV1Config(MoCoConfig):
    name: str = "mocov1"
    mlp_head: bool = False
    symmetric: bool = False
    temperature: float = 0.07


register_method("mocov1", MoCoV1Config, paper="He et al., CVPR 2020",
                published="ImageNet ResNet-50 linear 60.6 (no CIFAR-10 figure in the paper)",
                kind="momentum contrastive")(type(
    "MoCoV1", (MoCo,), {"__doc__": "MoCo v1: a linear head, tau 0.07."}))
