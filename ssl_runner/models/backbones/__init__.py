"""Backbones, chosen by `backbone.name`: torchvision's ResNets with the CIFAR
stem and a width multiplier (`resnet.py`), RotNet's Network-In-Network
(`nin.py`), both `StagedBackbone`s (`base.py`); `registry.py` says which
name builds which and checks a `backbone:` config.

Every backbone offers the same interface: `forward(x, upto)` (pooled features
of a stage), `feature_map(x, upto)` (the stage's unpooled map), `stage_names`,
`stage_dims`, `feature_dim`, `truncated(upto)` and `use_channels_last`;
`feature_map_shape` gives a stage's map shape without running it.
"""

from ssl_runner.models.backbones.base import Backbone, StagedBackbone, TruncatedBackbone, feature_map_shape
from ssl_runner.models.backbones.registry import build_backbone, check_backbone

__all__ = ["Backbone", "StagedBackbone", "TruncatedBackbone", "build_backbone", "check_backbone",
           "feature_map_shape"]
