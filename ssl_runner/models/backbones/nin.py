"""RotNet's CIFAR backbone: a Network-In-Network (Lin et al. 2014) of conv
blocks, as in `architectures/NetworkInNetwork.py` of the official RotNet code
(gidariss/FeatureLearningRotNet; Gidaris et al., ICLR 2018, Sec. 3.1),
selected by `backbone.name` = `nin` or `nin_*`.

Each block is three conv + BatchNorm + ReLU layers (no conv bias), a k x k
conv followed by two 1x1 convs, sizes kept by padding:

    block1: 5x5 3->192, 1x1 192->160, 1x1 160->96                 96 x 32 x 32
    block2: max-pool 3/2/1, 5x5 96->192, 1x1 192->192, 1x1       192 x 16 x 16
    block3: avg-pool 3/2/1, 3x3 192->192, 1x1, 1x1                192 x  8 x  8
    block4+: like block3, without the pool                        192 x  8 x  8

(shapes for 32-px input at width 1). The official code puts each pool at the
end of the block before; the composition, and so the network and its
parameters, are the same, but here a block's output is the map before the
pool (the non-linear classifier pools it; eval/nonlinear.py). With 4 blocks
this is the official `use_avg_on_conv3=False` network the paper's CIFAR
figures use. `width` multiplies every channel count (a tiny NIN for tests).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torch import Tensor, nn

from ssl_runner.errors import UserError
from ssl_runner.models.backbones.base import StagedBackbone

MIN_BLOCKS = 3


def block_names(num_blocks: int) -> Tuple[str, ...]:
    return tuple(f"block{i}" for i in range(1, num_blocks + 1))


class ConvBNReLU(nn.Sequential):
    """Conv2d (stride 1, no bias, size-keeping padding) + BatchNorm2d + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class NetworkInNetwork(StagedBackbone):
    """The NIN without its classifier; `forward` returns globally average-pooled
    features of a block, `feature_map` the block's map itself."""

    def __init__(self, num_blocks: int = 4, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if num_blocks < MIN_BLOCKS:
            raise ValueError(f"a NetworkInNetwork needs at least {MIN_BLOCKS} blocks, got {num_blocks}")
        c192, c160, c96 = (max(1, int(round(c * width))) for c in (192, 160, 96))
        self.stage_names: Tuple[str, ...] = block_names(num_blocks)
        self.block1 = nn.Sequential()
        self.block1.add_module("conv1", ConvBNReLU(in_channels, c192, 5))
        self.block1.add_module("conv2", ConvBNReLU(c192, c160, 1))
        self.block1.add_module("conv3", ConvBNReLU(c160, c96, 1))
        for i in range(2, num_blocks + 1):
            block = nn.Sequential()
            if i == 2:
                block.add_module("pool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            elif i == 3:
                block.add_module("pool", nn.AvgPool2d(kernel_size=3, stride=2, padding=1))
            block.add_module("conv1", ConvBNReLU(c96 if i == 2 else c192, c192, 5 if i == 2 else 3))
            block.add_module("conv2", ConvBNReLU(c192, c192, 1))
            block.add_module("conv3", ConvBNReLU(c192, c192, 1))
            self.add_module(f"block{i}", block)
        self.stage_dims: Dict[str, int] = {name: (c96 if name == "block1" else c192) for name in self.stage_names}
        # The pools before blocks 2 and 3 each halve the side.
        self.stage_halvings = {name: min(i, 2) for i, name in enumerate(self.stage_names)}
        self.feature_dim = c192
        self.channels_last = False
        for m in self.modules():  # the official weight_initialization (He et al. 2015, fan-out)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_map(self, x: Tensor, upto: Optional[str] = None) -> Tensor:
        """The unpooled output of block `upto` (default: the last block)."""
        upto = upto or self.stage_names[-1]
        self.check_stage(upto)
        return self.run_stages(self.as_input(x), upto)

    def forward(self, x: Tensor, upto: Optional[str] = None) -> Tensor:
        """Globally average-pooled features after block `upto` (default: the
        last block, the representation the rotation classifier reads)."""
        return self.feature_map(x, upto).mean((2, 3))

    # ---- the registry's hooks ---------------------------------------------------------
    @classmethod
    def selects(cls, name: str) -> bool:
        return name == "nin" or name.startswith("nin_")

    @classmethod
    def config_stage_names(cls, cfg: Any) -> List[str]:
        return list(block_names(cfg.num_blocks))

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"a Network-In-Network of {cfg.num_blocks} blocks"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if cfg.num_blocks < MIN_BLOCKS:
            raise UserError(f"config key 'backbone.num_blocks' is {cfg.num_blocks}; the Network-In-Network needs "
                            f"at least {MIN_BLOCKS} blocks (the RotNet paper's CIFAR model has 4).")

    @classmethod
    def from_config(cls, cfg: Any, image_size: int) -> "NetworkInNetwork":
        """A NIN of `cfg.num_blocks` blocks at `cfg.width` (any image size)."""
        return cls(num_blocks=cfg.num_blocks, width=cfg.width)


__all__ = ["ConvBNReLU", "MIN_BLOCKS", "NetworkInNetwork"]
