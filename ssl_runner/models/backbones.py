"""Backbones: torchvision's ResNets, with the CIFAR stem and a width multiplier,
and RotNet's Network-In-Network (models/nin.py), chosen by `backbone.name`.

The network is assembled from torchvision's own `BasicBlock` and `Bottleneck`
in torchvision's layout (`conv1`, `bn1`, `layer1`..`layer4`), so at width 1 a
ResNet-18/34/50 has exactly torchvision's parameters and state-dict keys, minus
the classifier `fc`: the backbone ends at the global average pool and returns
the representation h.

Every backbone offers the same interface: `forward(x, upto)` (pooled features
of a stage), `feature_map(x, upto)` (the stage's unpooled map), `stage_names`,
`stage_dims`, `feature_dim`, `truncated(upto)` and `use_channels_last`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Type, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ssl_runner.config import BackboneConfig, is_nin

if TYPE_CHECKING:
    from ssl_runner.models.nin import NetworkInNetwork

# depth -> (block, blocks per stage); 10 is the one-block-per-stage variant.
RESNET_LAYOUTS = {
    10: (BasicBlock, [1, 1, 1, 1]),
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
}
# Below this image side the ImageNet stem (7x7 stride 2 + max-pool) would leave
# a 1x1 map after layer4 for CIFAR; SimCLR Appendix B.9 swaps it for a 3x3 conv.
CIFAR_STEM_MAX_SIZE = 64

Block = Type[Union[BasicBlock, Bottleneck]]


class StagedBackbone(nn.Module):
    """What ResNet and NetworkInNetwork share: named stages run in order
    (`run_stages`), channels-last weights and inputs, and `truncated`.
    Subclasses set `stage_names`, `stage_dims`, `feature_dim` and
    `channels_last`, and define `feature_map` (any stem, then `run_stages`)."""

    stage_names: tuple = ()

    def use_channels_last(self, enabled: bool = True) -> "StagedBackbone":
        """NHWC weights and inputs: 1.6x faster training of resnet_tiny on this
        project's 2-core CPU (see README, Benchmarks); numerically the same."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def check_stage(self, upto: str) -> None:
        if upto not in self.stage_names:
            raise ValueError(f"unknown backbone stage '{upto}' (one of {', '.join(self.stage_names)})")

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


class ResNet(StagedBackbone):
    """A torchvision ResNet without `fc`; `forward` returns pooled features."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        block: Block,
        layers: List[int],
        width: float = 1.0,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[3] * block.expansion
        self.stage_dims: Dict[str, int] = {name: w * block.expansion for name, w in zip(self.stage_names, widths)}
        self.channels_last = False

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # Goyal et al. 2017: each block starts as identity
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_map(self, x: Tensor, upto: str = "layer4") -> Tensor:
        """The unpooled output of stage `upto` (`layer1` to `layer4`)."""
        self.check_stage(upto)
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.as_input(x)))))
        return self.run_stages(x, upto)

    def forward(self, x: Tensor, upto: str = "layer4") -> Tensor:
        """Globally average-pooled features after stage `upto` (`layer1` to
        `layer4`; the representation h is after `layer4`)."""
        return torch.flatten(self.avgpool(self.feature_map(x, upto)), 1)


STAGE_NAMES = ResNet.stage_names


class TruncatedBackbone(nn.Module):
    """A backbone whose output is the pooled features of an earlier stage:
    what the evaluation stages see with eval.feature_layer (a pretext task's
    last layers specialise in the pretext, so an earlier block often
    transfers better; RotNet Sec. 3.1)."""

    def __init__(self, backbone: "Backbone", upto: str) -> None:
        super().__init__()
        if upto not in backbone.stage_names:
            raise ValueError(f"unknown backbone stage '{upto}' (one of {', '.join(backbone.stage_names)})")
        self.backbone, self.upto = backbone, upto
        self.stage_names = backbone.stage_names[:backbone.stage_names.index(upto) + 1]
        self.stage_dims = {name: backbone.stage_dims[name] for name in self.stage_names}
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


Backbone = Union[ResNet, "NetworkInNetwork"]


def build_backbone(cfg: BackboneConfig, image_size: int) -> Backbone:
    """The backbone that `cfg` names, for images of side `image_size`: a
    NetworkInNetwork for `nin` (or `nin_*`), else a ResNet of `cfg.depth`."""
    if is_nin(cfg.name):
        from ssl_runner.models.nin import NetworkInNetwork

        return NetworkInNetwork(num_blocks=cfg.num_blocks, width=cfg.width)
    block, layers = RESNET_LAYOUTS[cfg.depth]
    cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else image_size <= CIFAR_STEM_MAX_SIZE
    return ResNet(
        block,
        layers,
        width=cfg.width,
        cifar_stem=cifar_stem,
        zero_init_residual=cfg.zero_init_residual,
    )
