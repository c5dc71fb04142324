"""Image grids that show a pretext task's output (colorization's colours, the
context encoder's completions): drawn in eval mode, saved as one PNG."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn
from torchvision.io import write_png
from torchvision.utils import make_grid


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on its running statistics) without gradients,
    the previous mode restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def save_image_grid(rows: Tensor, columns: int, path: Path) -> None:
    """Images in [0, 1] (N x 3 x H x W, row after row of `columns`) as one
    PNG with 2 px of white between them (a pretext method's artifact)."""
    grid = make_grid(rows.detach().float().clamp(0.0, 1.0).cpu(), nrow=columns, padding=2, pad_value=1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_png(grid.mul(255).round().to(torch.uint8), str(path))
