"""Projection and prediction heads: MLPs over the representation h, and
LooC's heads, one per embedding space."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class MLPHead(nn.Module):
    """Linear layers with BatchNorm + ReLU between them.

    `dims` lists every width from input to output, e.g. (512, 512, 128) is
    SimCLR's g: Linear -> BN -> ReLU -> Linear. The output layer has no
    BatchNorm unless `last_bn` (SimSiam's projector ends with one).
    """

    def __init__(self, dims: Sequence[int], hidden_bn: bool = True, last_bn: bool = False) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError(f"an MLP head needs an input and an output width, got {list(dims)}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=not ((hidden_bn and not last) or (last and last_bn))))
            if not last:
                if hidden_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
            elif last_bn:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        self.net = nn.Sequential(*layers)
        self.output_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SpaceHeads(nn.Module):
    """n + 1 MoCo v2 heads on the shared representation V: head 0 maps to
    the all-invariant space Z0, head i to Zi. `forward` concatenates the
    spaces' embeddings (N x (n + 1) d); `hidden` concatenates the heads'
    hidden layers, LooC++'s features."""

    def __init__(self, feature_dim: int, hidden_dim: int, output_dim: int, spaces: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            MLPHead([feature_dim, hidden_dim, output_dim], hidden_bn=False) for _ in range(spaces))
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim * spaces  # of `hidden`

    def forward(self, h: Tensor) -> Tensor:
        return torch.cat([head(h) for head in self.heads], dim=1)

    def hidden(self, h: Tensor) -> Tensor:
        return torch.cat([head.net[:-1](h) for head in self.heads], dim=1)


class ConcatSpaceFeatures(nn.Module):
    """Images -> LooC++ features: the backbone, then every head's hidden layer."""

    def __init__(self, backbone: nn.Module, heads: SpaceHeads) -> None:
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x: Tensor) -> Tensor:
        return self.heads.hidden(self.backbone(x))
