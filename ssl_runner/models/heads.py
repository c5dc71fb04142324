"""Projection and prediction heads: MLPs over the representation h."""

from __future__ import annotations

from typing import Sequence

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
