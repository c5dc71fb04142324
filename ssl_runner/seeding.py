"""Seeds derived from (seed, purpose, rank, epoch): what makes a resumed run
draw exactly the random numbers of the uninterrupted one (callbacks.EpochSeeds,
data.loaders.EpochShuffle)."""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch


def epoch_seed(seed: int, purpose: str, rank: int, epoch: int) -> int:
    """A 32-bit seed for one epoch of one purpose (a stage's name, or a
    loader's worker seeds) on one rank."""
    return int(np.random.SeedSequence([seed, zlib.crc32(purpose.encode()), rank, epoch]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Python's, NumPy's and torch's generators (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
