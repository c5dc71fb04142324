"""Decoders of the pretext tasks that predict an image from a feature map:
the context encoder's inpainting decoder with its channel-wise
fully-connected layer (Pathak et al., CVPR 2016, Sec. 3.1) and
colorization's decoder to ab-bin logits (Zhang et al., ECCV 2016, Sec. 2).
They live here, beside the backbones, because they are networks; the
methods own only how their outputs are scored.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The inpainting decoder's blocks halve their width at each upsampling, down to this.
MIN_DECODER_WIDTH = 16


class ChannelWiseFullyConnected(nn.Module):
    """Sec. 3.1: a fully-connected layer within each channel (C x hw x hw
    weights instead of a full layer's (C hw)^2): every output position of a
    channel sees every input position of that channel, which convolutions
    alone reach only over many layers. The paper follows it with a stride-1
    convolution to mix the channels (the decoder's first 1x1 convolution)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        positions = height * width
        bound = 1.0 / math.sqrt(positions)  # nn.Linear's initialisation, per channel
        self.weight = nn.Parameter(torch.empty(channels, positions, positions).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, positions).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        # One matrix product per channel, batched over the channels; made
        # contiguous first (a channels-last map makes a strided bmm 7x slower).
        per_channel = x.reshape(n, c, h * w).transpose(0, 1).contiguous()  # C x N x hw
        mixed = torch.baddbmm(self.bias.unsqueeze(1), per_channel, self.weight)  # C x N x hw
        return mixed.transpose(0, 1).reshape(n, c, h, w)


class InpaintingDecoder(nn.Module):
    """Encoder feature map (C x h x w) -> image (3 x size x size, in the
    normalised space of the inputs). The paper's decoder is up-convolutions
    (Sec. 3.1); here each 2x step is nearest upsampling then a 3x3 conv, BN
    and ReLU (resize-convolution: the same capacity without the checkerboard
    artefacts of strided transposed convolutions), the last step's conv
    giving RGB with no activation (normalised pixels are unbounded)."""

    def __init__(self, channels: int, height: int, width: int, image_size: int, decoder_width: int,
                 channel_wise_fc: bool = True) -> None:
        super().__init__()
        self.image_size = image_size
        layers: List[nn.Module] = []
        if channel_wise_fc:
            layers.append(ChannelWiseFullyConnected(channels, height, width))
        layers += [nn.Conv2d(channels, decoder_width, 1, bias=False), nn.BatchNorm2d(decoder_width),
                   nn.ReLU(inplace=True)]
        doublings = max(0, math.ceil(math.log2(image_size / min(height, width))))
        current = decoder_width
        for step in range(1, doublings):
            out = max(MIN_DECODER_WIDTH, decoder_width >> step)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(current, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            current = out
        # The last doubling paints the image directly, as DCGAN's generator's
        # last up-convolution (no block at full resolution: the costliest).
        if doublings:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers.append(nn.Conv2d(current, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, feature_map: Tensor) -> Tensor:
        image = self.net(feature_map)
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):  # a map side not a power-of-2 divisor
            image = F.interpolate(image, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return image


def _conv_bn_relu(in_channels: int, out_channels: int) -> List[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class ColourDecoder(nn.Module):
    """The backbone's last feature map (in_channels x input_side x
    input_side) -> Q bin logits at output_size x output_size: a conv block,
    then, as often as doubling input_side nears output_size, a bilinear 2x
    upsampling and a conv block (the paper's conv8 upsamples with a
    deconvolution), then a 1 x 1 convolution to the Q logits (conv8_313)."""

    def __init__(self, in_channels: int, width: int, num_bins: int, input_side: int, output_size: int) -> None:
        super().__init__()
        upsamplings = max(0, round(math.log2(output_size / input_side)))
        layers = _conv_bn_relu(in_channels, width)
        for _ in range(upsamplings):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv_bn_relu(width, width)]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(width, num_bins, 1)
        self.output_size = output_size

    def forward(self, feature_map: Tensor) -> Tensor:
        x = self.body(feature_map)
        if tuple(x.shape[-2:]) != (self.output_size, self.output_size):  # sides that are not powers of two apart
            x = F.interpolate(x, size=(self.output_size, self.output_size), mode="bilinear", align_corners=False)
        return self.classifier(x)


__all__ = ["ChannelWiseFullyConnected", "ColourDecoder", "InpaintingDecoder", "MIN_DECODER_WIDTH"]
