"""The stateful pieces the momentum methods share: an EMA copy of a network,
its momentum schedule, a queue of keys and a memory bank.

All state is registered as buffers, so it is saved in checkpoints and comes
back on resume; none of it takes gradients, so DDP leaves it alone (it only
synchronises parameters that require a gradient).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_runner.distributed import collectives


class MomentumEncoder(nn.Module):
    """An exponential moving average of `online` (MoCo's key encoder, BYOL's
    target network): theta_t <- m theta_t + (1 - m) theta_o after each
    optimizer step.

    Buffers are not averaged: the copy runs in training mode like the online
    network (MoCo Sec. 3.3, BYOL's target), so its BatchNorm normalises with
    the statistics of the batch it sees, and its running statistics are its own.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(online)
        self.net.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        for target, source in zip(self.net.parameters(), online.parameters()):
            target.mul_(momentum).add_(source.detach(), alpha=1.0 - momentum)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.net(x)


@torch.no_grad()
def shuffled_bn_keys(key_encoder: nn.Module, x: Tensor, splits: int) -> Tensor:
    """Keys of `x` under Shuffling BN (MoCo, Sec. 3.3), so that BatchNorm
    statistics cannot pair a query with its key: with several processes the
    global batch is shuffled across ranks before encoding and unshuffled
    after; on one device it is shuffled and encoded in `splits` separately
    normalised groups (the CIFAR demo's SplitBatchNorm, 8 groups)."""
    n = len(x)
    if collectives.world_size() > 1:
        rank, world = collectives.rank(), collectives.world_size()
        everything = collectives.gather_with_grad(x)
        perm = torch.randperm(len(everything), device=x.device)
        torch.distributed.broadcast(perm, src=0)
        local = key_encoder(everything[perm[rank * n:(rank + 1) * n]])
        keys = torch.empty(world * n, local.shape[1], device=x.device, dtype=local.dtype)
        keys[perm] = collectives.gather_with_grad(local)
        return keys[rank * n:(rank + 1) * n]
    perm = torch.randperm(n, device=x.device)
    groups = max(1, min(splits, n // 2))
    encoded = torch.cat([key_encoder(chunk) for chunk in x[perm].chunk(groups)])
    keys = torch.empty_like(encoded)
    keys[perm] = encoded
    return keys


# The choices of `method.momentum_schedule` (MoCo, LooC, BYOL).
MOMENTUM_SCHEDULES = ("constant", "cosine")


def momentum_at(step: int, total_steps: int, base: float, schedule: str) -> float:
    """The EMA momentum at optimizer step `step`: constant (MoCo), or BYOL's
    cosine increase from `base` to 1 over training (Sec. 3.2):
    1 - (1 - base) (cos(pi k / K) + 1) / 2."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
    raise ValueError(f"unknown momentum schedule '{schedule}' ({' or '.join(MOMENTUM_SCHEDULES)})")


class KeyQueue(nn.Module):
    """MoCo's dictionary: a FIFO of the `size` most recent keys (Sec. 3.1).

    `enqueue` gathers the keys of every rank first, so all ranks hold the same
    queue; the oldest keys are overwritten, wrapping around the end.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        keys = collectives.all_gather_rows(F.normalize(keys.detach(), dim=1))[-len(self.keys):]
        slots = (self.ptr + torch.arange(len(keys), device=keys.device)) % len(self.keys)
        self.keys[slots] = keys.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + len(keys)) % len(self.keys))


class MemoryBank(nn.Module):
    """NPID's memory: one normalised feature per training image (Sec. 3.2),
    updated as v_i <- normalise(m v_i + (1 - m) f_i) for the images of each
    batch (indices and features gathered from every rank)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        stdv = 1.0 / math.sqrt(dim / 3)  # NPID's uniform initialisation, then normalised
        self.register_buffer("bank", F.normalize(torch.rand(size, dim) * 2 * stdv - stdv, dim=1))

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor, momentum: float) -> None:
        indices, features = collectives.all_gather_rows(indices), collectives.all_gather_rows(features.detach())
        mixed = momentum * self.bank[indices] + (1.0 - momentum) * features.to(self.bank.dtype)
        self.bank[indices] = F.normalize(mixed, dim=1)
