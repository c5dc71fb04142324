"""What every backbone shares: `StagedBackbone` (named stages run in order,
channels-last, the hooks the registry reads a config through),
`TruncatedBackbone` (a backbone evaluated at an earlier stage) and
`feature_map_shape`, which works a stage's map shape out from the layout
instead of running the network on a dummy batch.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn


def check_stage(stage_names: Sequence[str], upto: str) -> None:
    if upto not in stage_names:
        raise ValueError(f"unknown backbone stage '{upto}' (one of {', '.join(stage_names)})")


class StagedBackbone(nn.Module):
    """What ResNet and NetworkInNetwork share: named stages run in order
    (`run_stages`), channels-last weights and inputs, and `truncated`.
    Subclasses set `stage_names`, `stage_dims`, `stage_halvings`,
    `feature_dim` and `channels_last`, define `feature_map` (any stem, then
    `run_stages`), and answer the registry's questions about a
    `backbone:` config (the classmethods below)."""

    stage_names: tuple = ()
    # Per stage: how often the input's side is halved by the time it leaves
    # the stage (read by `feature_map_shape`).
    stage_halvings: Dict[str, int]

    # ---- the registry's hooks: what a `backbone:` config section means -----
    @classmethod
    def selects(cls, name: str) -> bool:
        """Whether `backbone.name` = `name` selects this kind of backbone."""
        raise NotImplementedError

    @classmethod
    def config_stage_names(cls, cfg: Any) -> List[str]:
        """The stages the backbone that `cfg` describes will have."""
        raise NotImplementedError

    @classmethod
    def describe(cls, cfg: Any) -> str:
        """What `cfg` builds, for messages ("a ResNet")."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuse (`UserError`) settings of `cfg` this kind cannot build."""

    @classmethod
    def from_config(cls, cfg: Any, image_size: int) -> "StagedBackbone":
        """The backbone `cfg` describes, for images of side `image_size`."""
        raise NotImplementedError

    # ---- the network ----------------------------------------------------------------
    def use_channels_last(self, enabled: bool = True) -> "StagedBackbone":
        """NHWC weights and inputs: 1.6x faster training of resnet_tiny on this
        project's 2-core CPU (see README, Benchmarks); numerically the same."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def check_stage(self, upto: str) -> None:
        check_stage(self.stage_names, upto)

    def as_input(self, x: Tensor) -> Tensor:
        """`x` in the memory format the weights are in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def run_stages(self, x: Tensor, upto: str) -> Tensor:
        """The stages from the first to `upto`, applied to `x` in order."""
        for name in self.stage_names[:self.stage_names.index(upto) + 1]:
            x = getattr(self, name)(x)
        return x

    def truncated(self, upto: str) -> "TruncatedBackbone":
        """This backbone evaluated at an intermediate stage (eval.feature_layer)."""
        return TruncatedBackbone(self, upto)


class TruncatedBackbone(nn.Module):
    """A backbone whose output is the pooled features of an earlier stage:
    what the evaluation stages see with eval.feature_layer (a pretext task's
    last layers specialise in the pretext, so an earlier block often
    transfers better; RotNet Sec. 3.1)."""

    def __init__(self, backbone: StagedBackbone, upto: str) -> None:
        super().__init__()
        check_stage(backbone.stage_names, upto)
        self.backbone, self.upto = backbone, upto
        self.stage_names = backbone.stage_names[:backbone.stage_names.index(upto) + 1]
        self.stage_dims = {name: backbone.stage_dims[name] for name in self.stage_names}
        self.stage_halvings = {name: backbone.stage_halvings[name] for name in self.stage_names}
        self.feature_dim = backbone.stage_dims[upto]

    def use_channels_last(self, enabled: bool = True) -> "TruncatedBackbone":
        self.backbone.use_channels_last(enabled)
        return self

    def feature_map(self, x: Tensor, upto: Optional[str] = None) -> Tensor:
        return self.backbone.feature_map(x, upto or self.upto)

    def forward(self, x: Tensor, upto: Optional[str] = None) -> Tensor:
        return self.backbone(x, upto=upto or self.upto)

    def truncated(self, upto: str) -> "TruncatedBackbone":
        return TruncatedBackbone(self.backbone, upto)


# What the rest of the runner holds as "the backbone".
Backbone = Union[StagedBackbone, TruncatedBackbone]


def feature_map_shape(backbone: Backbone, stage: str, image_size: int) -> Tuple[int, int, int]:
    """(channels, height, width) of `backbone.feature_map(x, stage)` for
    image_size x image_size inputs. Every stride-2 convolution and pool of
    these backbones has a k x k kernel with padding (k - 1) // 2 (7/3, 3/1,
    1/0), which takes a side s to floor((s - 1) / 2) + 1 = ceil(s / 2); the
    other layers keep the size. So the shape follows from the layout, with
    no forward pass (nothing runs, no BatchNorm statistics are touched)."""
    check_stage(backbone.stage_names, stage)
    side = image_size
    for _ in range(backbone.stage_halvings[stage]):
        side = (side - 1) // 2 + 1
    return backbone.stage_dims[stage], side, side


__all__ = ["Backbone", "StagedBackbone", "TruncatedBackbone", "check_stage", "feature_map_shape"]
