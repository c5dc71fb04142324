"""How many operators one LARS step dispatches for the CIFAR ResNet-18, as a
per-tensor loop (the CPU's default) and as multi-tensor `foreach` kernels
(the GPU's default): on a GPU each operator is at least one kernel launch,
and at a few microseconds each plus Python's time per call, the loop's
launches are a visible part of a step (docs/performance.md, "The GPU path").
Counted on the CPU: which operators a step calls does not depend on the
device (on a GPU, `_foreach_mul_` by per-tensor trust ratios may still launch
one kernel per tensor inside).

    python scripts/count_optimizer_ops.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from ssl_runner.config import BackboneConfig
from ssl_runner.models.backbones import build_backbone
from ssl_runner.models.heads import MLPHead
from ssl_runner.optim import LARS, split_decay_groups


def step_ops(foreach: bool) -> int:
    torch.manual_seed(0)
    model = torch.nn.Sequential(build_backbone(BackboneConfig(name="resnet18", depth=18), 32), MLPHead([512, 512, 128]))
    optimizer = LARS(split_decay_groups(model, 1e-6, True), lr=0.6, weight_decay=1e-6, foreach=foreach)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()  # the momentum buffers exist from here on
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        optimizer.step()
    # Operators the step calls itself (not those an operator calls inside it): each
    # is a dispatch from Python and, on a GPU, one kernel launch or more.
    return sum(1 for event in prof.events() if event.name.startswith("aten::")
               and not (event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::")))


if __name__ == "__main__":
    tensors = sum(1 for _ in torch.nn.Sequential(build_backbone(BackboneConfig(name="resnet18", depth=18), 32),
                                                   MLPHead([512, 512, 128])).parameters())
    print(f"CIFAR ResNet-18 + SimCLR head: {tensors} parameter tensors; torch {torch.__version__}")
    for foreach in (False, True):
        print(f"LARS step, {'foreach (GPU default)' if foreach else 'per-tensor loop (CPU default)'}: "
              f"{step_ops(foreach)} operators called")
