"""Global (synchronised) BatchNorm: statistics over the batch of every rank.

SimCLR (Sec. 3, "Global BN") and the methods after it normalise with the
statistics of the whole global batch: per-device statistics let a contrastive
model find a shortcut in the batch composition, and small per-device batches
give noisy statistics. On CUDA torch's `SyncBatchNorm` does this; it refuses
CPU tensors, so CPU processes (gloo) use `GlobalBatchNorm` below, which sums
the per-channel moments over the ranks with a differentiable all-reduce and
lets autograd derive the backward pass (which then sums over ranks too).

`convert_batchnorm` replaces every BatchNorm layer of a module (backbone and
projection/prediction heads alike, 1-d and 2-d) with the synchronised kind,
keeping its parameters, buffers and state-dict keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ssl_runner.distributed import collectives


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the concatenation of every rank's batch (any input of
    shape N x C x ...). With one process, or in eval mode, plain BatchNorm."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or collectives.world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # Moments about a shift that every rank shares (the running mean, kept
        # equal on all ranks) to avoid cancellation in E[x^2] - E[x]^2.
        shift = (self.running_mean if self.running_mean is not None else torch.zeros_like(self.weight)).detach()
        # Statistics in float32 at least (bf16 and half inputs), float64 for float64 inputs.
        stats_dtype = torch.promote_types(x.dtype, torch.float32)
        xs = x.to(stats_dtype) - shift.to(stats_dtype).view(shape)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=stats_dtype, device=x.device)
        moments = torch.cat([xs.sum(dims), (xs * xs).sum(dims), count])
        moments = collectives.all_reduce_sum(moments)
        c = x.shape[1]
        n = moments[-1]
        mean_s = moments[:c] / n
        var = (moments[c:2 * c] / n - mean_s * mean_s).clamp_min(0)
        y = (xs - mean_s.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean_s.detach() + shift, var.detach(), int(n.item()))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / max(1, n - 1)
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)


def _convert(module: nn.Module, make) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        out = make(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child, make))
    return out


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """`module` with every BatchNorm layer synchronised across ranks: torch's
    SyncBatchNorm on CUDA, `GlobalBatchNorm` elsewhere. Converts in place where
    the layers are children (returns the converted root)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module, GlobalBatchNorm)


def count_synchronised(module: nn.Module) -> int:
    return sum(isinstance(m, (GlobalBatchNorm, nn.SyncBatchNorm)) for m in module.modules())


__all__ = ["GlobalBatchNorm", "convert_batchnorm", "count_synchronised"]
