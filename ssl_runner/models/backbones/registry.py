"""The backbone kinds and what a `backbone:` config section means: which
kind `backbone.name` selects, its stages, the checks on its settings, and
`build_backbone`, the one way the runner makes a backbone.

To add a backbone: its file in this package (a `StagedBackbone` subclass
with the registry's hooks), its `conf/backbone/<name>.yaml`, and its class
in `BACKBONES`.
"""

from __future__ import annotations

from typing import Any, Type

from ssl_runner.errors import UserError
from ssl_runner.models.backbones.base import StagedBackbone
from ssl_runner.models.backbones.nin import NetworkInNetwork
from ssl_runner.models.backbones.resnet import ResNet

# Asked in order; the first whose `selects(backbone.name)` is true builds it.
# The ResNet takes every name, so it comes last.
BACKBONES: tuple = (NetworkInNetwork, ResNet)


def backbone_class(name: str) -> Type[StagedBackbone]:
    """The kind of backbone `backbone.name` = `name` selects."""
    return next(kind for kind in BACKBONES if kind.selects(name))


def build_backbone(cfg: Any, image_size: int) -> StagedBackbone:
    """The backbone that `cfg` (a `backbone:` section) names, for images of
    side `image_size`: a NetworkInNetwork for `nin` (or `nin_*`), else a
    ResNet of `cfg.depth`."""
    return backbone_class(cfg.name).from_config(cfg, image_size)


def check_backbone(cfg: Any) -> None:
    """Refuse (`UserError`) a `backbone:` section that cannot be built, or an
    eval.feature_layer that is not one of its stages (`cfg`: the run config)."""
    b = cfg.backbone
    if b.width <= 0:
        raise UserError(f"config key 'backbone.width' is {b.width}; it must be positive (1.0: the published widths).")
    kind = backbone_class(b.name)
    kind.check_config(b)
    layer = cfg.eval.feature_layer
    stages = kind.config_stage_names(b)
    if layer is not None and layer not in stages:
        raise UserError(f"config key 'eval.feature_layer' is '{layer}', but backbone '{b.name}' "
                        f"({kind.describe(b)}) has the stages {', '.join(stages[:-1])} and {stages[-1]}: set "
                        f"eval.feature_layer to one of them, or to null for the representation after {stages[-1]}.")


__all__ = ["BACKBONES", "backbone_class", "build_backbone", "check_backbone"]
