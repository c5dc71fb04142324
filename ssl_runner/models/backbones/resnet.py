"""torchvision's ResNets, with the CIFAR stem and a width multiplier: the
backbone for every `backbone.name` the other backbones do not claim.

The network is assembled from torchvision's own `BasicBlock` and `Bottleneck`
in torchvision's layout (`conv1`, `bn1`, `layer1`..`layer4`), so at width 1 a
ResNet-18/34/50 has exactly torchvision's parameters and state-dict keys, minus
the classifier `fc`: the backbone ends at the global average pool and returns
the representation h.
"""

from __future__ import annotations

from typing import Any, Dict, List, Type, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ssl_runner.errors import UserError
from ssl_runner.models.backbones.base import StagedBackbone

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
        # The ImageNet stem halves twice (conv1, max-pool), layer2..layer4 once each.
        stem_halvings = 0 if cifar_stem else 2
        self.stage_halvings = {name: stem_halvings + i for i, name in enumerate(self.stage_names)}
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

    # ---- the registry's hooks ---------------------------------------------------------
    @classmethod
    def selects(cls, name: str) -> bool:
        """Every name: the registry asks the ResNet last."""
        return True

    @classmethod
    def config_stage_names(cls, cfg: Any) -> List[str]:
        return list(cls.stage_names)

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return "a ResNet"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if cfg.depth not in RESNET_LAYOUTS:
            raise UserError(f"config key 'backbone.depth' is '{cfg.depth}', which is not one of: "
                            f"{', '.join(str(depth) for depth in RESNET_LAYOUTS)}.")

    @classmethod
    def from_config(cls, cfg: Any, image_size: int) -> "ResNet":
        """A ResNet of `cfg.depth`; the CIFAR stem unless `cfg.cifar_stem`
        says otherwise, for images of at most CIFAR_STEM_MAX_SIZE."""
        block, layers = RESNET_LAYOUTS[cfg.depth]
        cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else image_size <= CIFAR_STEM_MAX_SIZE
        return cls(
            block,
            layers,
            width=cfg.width,
            cifar_stem=cifar_stem,
            zero_init_residual=cfg.zero_init_residual,
        )


__all__ = ["CIFAR_STEM_MAX_SIZE", "RESNET_LAYOUTS", "ResNet"]
