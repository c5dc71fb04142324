"""Where this process stands among the ranks, and the collectives the methods
and evaluation stages share.

Every function works unchanged on a single process (no process group): a
gather returns its input, a barrier does nothing. So a method or stage calls
them without asking whether the run is distributed.

The differentiable ones (`gather_with_grad`, `all_reduce_sum`) are
`torch.distributed.nn.functional`'s all_gather and all_reduce. Checked against
the hand-written autograd functions they replaced, on 2 gloo processes:
forward and backward bitwise equal. With 3 or more ranks the gather's
gradient can differ in the last bits, because gloo's backward sums the ranks'
contributions in rank order (all-to-all, then a sum) where the old one
all-reduced them (another order); on NCCL the backward is a reduce-scatter.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable
from torch import Tensor

# ---- where this process stands -------------------------------------------------------


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def local_device(accelerator: str) -> torch.device:
    """The device this rank computes on outside Lightning (feature extraction)."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# ---- differentiable collectives ---------------------------------------------------------

# torch.distributed.nn.functional warns (FutureWarning) at every call that it
# is deprecated for torch.distributed._functional_collectives, a private
# module whose differentiable gather needs reduce-scatter, which gloo lacks.
_DEPRECATION = r"torch\.distributed\.nn\.functional\..* is deprecated"


def gather_with_grad(x: Tensor) -> Tensor:
    """Every rank's `x` concatenated in rank order (equal shapes on every
    rank), differentiable; `x` itself on a single process.

    Each rank's loss depends on every rank's slice, so the gradient of a slice
    is the sum, over ranks, of the gradient each rank's loss sends it. With DDP
    averaging parameter gradients, the step then equals the gradient of the
    mean loss over the global batch, as on one device (no double counting).
    """
    if world_size() == 1:
        return x
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        return torch.cat(differentiable.all_gather(x))


def all_reduce_sum(x: Tensor) -> Tensor:
    """Differentiable sum over ranks: the sum feeds every rank's loss, so the
    backward pass sums the ranks' gradients of it too."""
    if world_size() == 1:
        return x
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        return differentiable.all_reduce(x)


# ---- collectives without gradient ---------------------------------------------------------

def all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's rows (equal shapes), concatenated in rank order; no gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shard_indices(total: int) -> range:
    """This rank's rows of a `total`-row job: every W-th, from its rank."""
    return range(rank(), total, world_size())


def gather_strided(local: Tensor, total: int) -> Tensor:
    """Reassemble a tensor computed in shards: rank r holds rows r, r+W, r+2W, ...
    of a `total`-row result (see `shard_indices`). Returns all rows, in order,
    on every rank."""
    w = world_size()
    if w == 1:
        return local
    per_rank = -(-total // w)
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, total, w))
        out[r::w] = part[:count]
    return out


def gather_by_index(values: Tensor, indices: Tensor) -> Tensor:
    """Rows that the ranks computed for sample `indices` (possibly repeated, as
    a DistributedSampler pads), gathered and put in sample order; each sample
    once. Equal row counts on every rank."""
    all_v, all_i = all_gather_rows(values), all_gather_rows(indices)
    out = torch.empty((int(all_i.max()) + 1, *values.shape[1:]), dtype=values.dtype, device=values.device)
    out[all_i] = all_v  # a padded duplicate writes the same row twice
    return out
