"""Features of a frozen encoder over a whole split, computed in shards.

Rank r of W encodes images r, r+W, r+2W, ...; the shards are gathered so every
rank holds the features of every image, in data-set order, exactly as one
process would compute them (no sample padded in or dropped). kNN and the
linear probe on cached features then give the single-process accuracy.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ssl_runner.distributed import collectives
from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import ImageSet
from ssl_runner.data.loaders import EvalDataset, already_collated, loader_kwargs
from ssl_runner.views.pixels import eval_view


@torch.no_grad()
def extract_features(encoder: nn.Module, images: ImageSet, data: DataConfig, device: torch.device,
                     precision: str = "32-true") -> Tuple[Tensor, Tensor]:
    """(features, labels) of every image of `images`, unaugmented, on the CPU."""
    dataset = EvalDataset(images, data.image_size)
    shard = Subset(dataset, list(collectives.shard_indices(len(dataset))))
    loader = DataLoader(shard, batch_size=data.eval_batch_size, shuffle=False, collate_fn=already_collated,
                        **loader_kwargs(data))
    was_training = encoder.training
    encoder.eval().to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16")
                else nullcontext())
    features, labels = [], []
    with autocast:
        for x, y, _ in loader:
            x = eval_view(x.to(device, non_blocking=True), list(data.mean), list(data.std))
            features.append(encoder(x).float())
            labels.append(y.to(device))
    encoder.train(was_training)
    local_f = torch.cat(features) if features else torch.zeros(0, 1, device=device)
    local_l = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if collectives.world_size() > 1 and not features:
        raise RuntimeError("a rank received no images to encode; the split is smaller than the number of ranks")
    total = len(dataset)
    return (collectives.gather_strided(local_f, total).cpu(), collectives.gather_strided(local_l, total).cpu())


def standardise(train: Tensor, test: Tensor, eps: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """`train` and `test` features shifted and scaled by the train split's
    per-dimension mean and std (eps as BatchNorm's), for the linear probe on
    cached features. Still a linear classifier of the raw features, but a
    well-conditioned one: an untrained encoder's features vary a few times
    less across images than a trained one's, so with equal epochs and lr its
    probe stopped far short of convergence and inflated the linear gain. MAE
    (He et al. 2022, Appendix A.2) normalises the same way, with BatchNorm
    without affine; a fixed statistic of the train split is the same on every
    rank and in every attempt."""
    mean = train.mean(dim=0, keepdim=True)
    scale = (train.var(dim=0, unbiased=False, keepdim=True) + eps).rsqrt()
    return (train - mean) * scale, (test - mean) * scale
