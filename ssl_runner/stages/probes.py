"""The property probes: how much of an image property the frozen features
keep (LooC, Xiao et al. 2021, Table 2; SimCLR, Chen et al. 2020, Sec. 4.2's
colour probe), each with its random-init twin: the floor that says whether
pretraining kept or destroyed the property."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch

from ssl_runner.data.datasets import balanced_subset
from ssl_runner.views.color import grayscale
from ssl_runner.encoder import LoadedEncoder
from ssl_runner.eval.features import extract_features
from ssl_runner.stages.classifiers import linear_on_features
from ssl_runner.stages.context import RunContext
from ssl_runner.stages.registry import ENCODER, TEST_SPLIT, TRAIN_SPLIT, Stage, register_stage

Transform = Callable[[torch.Tensor], torch.Tensor]


class _TransformedInput(torch.nn.Module):
    """`encoder` applied to `transform(x)`: a probe's view of the eval images."""

    def __init__(self, encoder: torch.nn.Module, transform: Transform) -> None:
        super().__init__()
        self.encoder, self.transform = encoder, transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.transform(x))


def _probe(ctx: RunContext, stage: str, enc: LoadedEncoder, transforms: List[Transform]) -> Dict[str, Any]:
    """Every image of class-balanced train / test subsets is shown once per
    transform, and a linear classifier predicts which transform it was (its
    last-epoch test accuracy; chance is 1 / len(transforms))."""
    cfg, probe = ctx.cfg, ctx.cfg.eval.probe
    parts: Dict[str, torch.Tensor] = {}
    for split, images, size in (("train", ctx.train_images, probe.train_images),
                                ("test", ctx.test_images, probe.test_images)):
        if size is not None and size < len(images):
            images = images.select(balanced_subset(images.labels, size, cfg.seed))
        features = []
        for transform in transforms:
            f, _ = extract_features(_TransformedInput(enc.backbone, transform), images, cfg.data, ctx.device,
                                    cfg.trainer.precision)
            features.append(f)
        parts[split] = torch.cat(features)
        parts[f"{split}_labels"] = torch.arange(len(transforms)).repeat_interleave(len(images))
    result = linear_on_features(ctx, stage, probe, parts, len(transforms), encoder_method=enc.method)
    return {**result, "chance": round(100 / len(transforms), 2), "train_images": len(parts["train"]) // len(transforms),
            "test_images": len(parts["test"]) // len(transforms), "encoder_checkpoint": enc.path}


def rotations(ctx: RunContext) -> List[Transform]:
    """Rotation by 0, 90, 180 or 270 degrees: LooC's measure of the rotation
    information an augmentation can destroy (Table 2)."""
    return [lambda x, k=k: torch.rot90(x, k, dims=(2, 3)) for k in range(4)]


def colour_or_gray(ctx: RunContext) -> List[Transform]:
    """Colour or grayscale: the probe by which SimCLR showed that its head
    discards colour (99.3 on h, 97.4 on g(h)). Grayscale is computed on the
    unnormalised image, then normalised again."""
    mean = torch.tensor(ctx.cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(ctx.cfg.data.std).view(1, 3, 1, 1)

    def to_gray(x: torch.Tensor) -> torch.Tensor:
        m, s = mean.to(x.device, x.dtype), std.to(x.device, x.dtype)
        return (grayscale(x * s + m).expand_as(x) - m) / s

    return [lambda x: x, to_gray]


def _register(name: str, transforms: Callable[[RunContext], List[Transform]]) -> None:
    twin = f"{name}_random_init"
    register_stage(Stage(
        name, lambda ctx: _probe(ctx, name, ctx.encoder(), transforms(ctx)), (ENCODER, TRAIN_SPLIT, TEST_SPLIT),
        ("checkpoints/last.ckpt", "metrics.csv"),
        random_init=Stage(twin, lambda ctx: _probe(ctx, twin, ctx.random_init_encoder(), transforms(ctx)),
                          (TRAIN_SPLIT, TEST_SPLIT), ("checkpoints/last.ckpt", "metrics.csv"))))


_register("probe_rotation", rotations)
_register("probe_color", colour_or_gray)
