"""RotNet's non-linear classifier (Gidaris et al., ICLR 2018, Sec. 3.1): a
three-layer MLP on the flattened feature map of a frozen conv block, as the
official code's `MultLayer` classifier (architectures/NonLinearClassifier.py,
CIFAR10_MultLayerClassifier_on_RotNet_NIN4blocks_Conv2_feats.py).

    pool 3x3 / stride 2 / pad 1 (max, or avg) -> flatten (C x ceil(H/2) x ceil(W/2))
    -> Linear(hidden, no bias) + BatchNorm1d + ReLU
    -> Linear(hidden, no bias) + BatchNorm1d + ReLU
    -> Linear(classes)

The `nonlinear` stage (pipeline.py) trains it with `Classifier`, whose frozen
encoder is `FeatureMap` around the backbone.
"""

from __future__ import annotations

import math
from typing import Tuple

from torch import Tensor, nn

from ssl_runner.models.backbones import Backbone, feature_map_shape


class NonLinearHead(nn.Module):
    """The classifier over a `channels x height x width` feature map."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, hidden_dim: int = 200,
                 pool: str = "max") -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"unknown pool '{pool}' (max or avg)")
        self.pool = (nn.MaxPool2d if pool == "max" else nn.AvgPool2d)(kernel_size=3, stride=2, padding=1)
        # Both pools keep floor((H + 2 - 3) / 2) + 1 = ceil(H / 2) rows.
        self.in_features = channels * math.ceil(height / 2) * math.ceil(width / 2)
        self.out_features = num_classes
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.in_features, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_classes),
        )
        for m in self.modules():  # the official initialisation: N(0, 2 / fan-out), zero bias
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.out_features))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feature_map: Tensor) -> Tensor:
        return self.mlp(self.pool(feature_map))


class FeatureMap(nn.Module):
    """A backbone's unpooled map at its stage (a TruncatedBackbone's
    eval.feature_layer, else the last stage), as an encoder module."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.feature_map(x)

    def output_shape(self, image_size: int) -> Tuple[int, int, int]:
        """C, H, W of the map for square images of side `image_size`."""
        return feature_map_shape(self.backbone, self.backbone.stage_names[-1], image_size)


__all__ = ["FeatureMap", "NonLinearHead"]
