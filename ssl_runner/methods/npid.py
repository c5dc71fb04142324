"""NPID: instance discrimination with a memory bank (Wu et al., CVPR 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.losses import memory_bank_nce, nce_loss
from ssl_runner.methods.base import BaseMethod, SSLStepOutput
from ssl_runner.methods.registry import register_method
from ssl_runner.models.momentum import MemoryBank
from ssl_runner.views.recipe import view_recipe_from_config


def nce_log_normaliser(positive_logits: Tensor, noise_logits: Tensor, num_data: int) -> float:
    """log Z, the NCE normaliser, estimated from one batch as NPID's code does
    (lemniscate.pytorch, lib/NCEAverage.py: Z = out.mean() * outputSize):
    `num_data` x the mean of exp(v.f / tau) over the batch's N x (m + 1)
    logits, the positive's column included. In log space: no overflow."""
    logits = torch.cat([positive_logits[:, None], noise_logits], dim=1).detach().flatten().float()
    return math.log(num_data) + float(torch.logsumexp(logits, dim=0)) - math.log(len(logits))


@dataclass
class NPIDConfig:
    name: str = "npid"
    embedding_dim: int = 128
    # tau 0.07 (ImageNet); 0.1 on CIFAR in the official code.
    temperature: float = 0.1
    # Noise samples per image for NCE (Sec. 3.2: m = 4,096, for ImageNet's
    # 1.28M images); 0: the exact non-parametric softmax over the whole bank
    # (Eq. 2), affordable for CIFAR's 50,000.
    noise_samples: int = 0
    # v_i <- normalise(m v_i + (1 - m) f_i) (Sec. 3.2: 0.5).
    bank_momentum: float = 0.5


@register_method("npid", NPIDConfig, paper="Wu et al., CVPR 2018", published="kNN 80.8 (ResNet-18)",
                 kind="memory bank")
class NPID(BaseMethod):
    """Each image is its own class: a linear map to 128-d, L2-normalised,
    scored against a memory bank of every image's last feature with a
    non-parametric softmax at temperature tau (Eq. 2), exactly or, with
    `noise_samples` > 0, approximated by NCE (Eq. 5-7).

    For NCE, the normaliser Z is estimated once, from the first batch, as NPID's code
    does (`nce_log_normaliser`), and kept in the checkpoint.
    """

    not_exported = ("memory",)

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__(cfg, num_classes, num_samples)
        if num_samples < 2:
            raise UserError(f"NPID's memory bank holds one row per training image and needs at least 2, "
                            f"not {num_samples}: train on more images (data.subset).")
        self.view_maker = view_recipe_from_config(cfg, num_views=1)  # one view, scored against the bank
        m = cfg.method
        self.embed = nn.Linear(self.feature_dim, m.embedding_dim)
        self.memory = MemoryBank(num_samples, m.embedding_dim)
        self.register_buffer("log_normaliser", torch.tensor(float("nan")))

    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        m = self.cfg.method
        h = self.backbone(views[0])
        f = F.normalize(self.embed(h), dim=1)
        bank = self.memory.bank
        if m.noise_samples == 0:
            # A copy: the bank is updated in place below, before the backward pass.
            loss = memory_bank_nce(f, bank.clone(), indices, m.temperature)
            self.memory.update(indices, f, m.bank_momentum)
            return SSLStepOutput(loss=loss, features=h, embeddings=f)
        noise = torch.randint(0, len(bank), (len(f), m.noise_samples), device=f.device)
        positive_logits = (bank[indices] * f).sum(dim=1) / m.temperature
        noise_logits = torch.einsum("nkd,nd->nk", bank[noise], f) / m.temperature
        if torch.isnan(self.log_normaliser):
            self.log_normaliser.fill_(nce_log_normaliser(positive_logits, noise_logits, len(bank)))
        loss = nce_loss(positive_logits, noise_logits, float(self.log_normaliser), len(bank))
        self.memory.update(indices, f, m.bank_momentum)
        return SSLStepOutput(loss=loss, features=h, embeddings=f,
                             logs={"log_normaliser": self.log_normaliser.detach().clone()})


__all__ = ["NPID", "nce_log_normaliser"]
