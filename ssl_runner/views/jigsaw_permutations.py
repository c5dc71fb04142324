"""The Jigsaw task's permutation set (Noroozi & Favaro, ECCV 2016, "Unsupervised
Learning of Visual Representations by Solving Jigsaw Puzzles").

A fixed set of permutations of the 9 tiles of a 3 x 3 grid is chosen once,
greedily, for a large Hamming distance between its members (the paper's
Algorithm 1); `cached_permutation_set` keeps it on disk. The puzzles made
with it are in `jigsaw.py`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import Tensor

from ssl_runner.safe_io import atomic_torch_save

log = logging.getLogger(__name__)

# Every permutation of the tiles is a candidate, so the search is practical up
# to 10 tiles (10! = 3.6M candidates, about 0.3 GB of index lists).
MAX_TILES = 10

# Part of the cache file name: bump it whenever the selection changes (the
# candidate order, the tie rule), so that no stale set is loaded.
PERMUTATION_SET_VERSION = 1


def _check_set_arguments(size: int, tiles: int) -> None:
    if not 2 <= tiles <= MAX_TILES:
        raise ValueError(f"a permutation set has between 2 and {MAX_TILES} tiles, got tiles={tiles}")
    if not 2 <= size <= math.factorial(tiles):
        raise ValueError(f"a permutation set of {tiles} tiles has between 2 and {tiles}! = "
                         f"{math.factorial(tiles)} permutations, got size={size}")


def all_permutations(tiles: int) -> Tensor:
    """Every permutation of 0..tiles-1, in lexicographic order: tiles! x tiles, uint8."""
    permutations = torch.zeros(1, 0, dtype=torch.uint8)
    for m in range(1, tiles + 1):
        # The permutations of m items led by each first item f: f, then those
        # of the m - 1 others (the values from f up moved up by one).
        rows = len(permutations)
        permutations = torch.cat([
            torch.cat([torch.full((rows, 1), first, dtype=torch.uint8), permutations + (permutations >= first)], 1)
            for first in range(m)])
    return permutations


def hamming_permutation_set(size: int, tiles: int = 9, seed: int = 0) -> Tensor:
    """`size` permutations of `tiles` tiles chosen for a maximal average
    Hamming distance: size x tiles, long, in the order chosen.

    The paper's greedy algorithm (Algorithm 1; "maximal" in Table 4): start
    from a random permutation of all tiles! candidates, then repeatedly take
    the candidate with the largest summed (so also average) Hamming distance
    to the permutations taken so far. Ties go to the first candidate in an
    order shuffled by `seed`, so they are broken uniformly at random, and the
    set depends only on (size, tiles, seed).
    """
    _check_set_arguments(size, tiles)
    generator = torch.Generator().manual_seed(seed)
    candidates = all_permutations(tiles)
    candidates = candidates[torch.randperm(len(candidates), generator=generator)]
    # The summed distance from candidate c to the chosen set S is
    # |S| tiles - (positions where c agrees with a member of S, summed), so
    # the candidate with the fewest summed agreements has the largest summed
    # distance. Each step adds the agreements with the newly chosen
    # permutation only: for each of its (position i, value v) pairs, one to
    # the (tiles - 1)! candidates that also hold v at i, from lists made once,
    # rather than comparing all tiles! x tiles entries.
    # Contiguous: index_add_ with a strided index is over 10x slower.
    by_position_and_value = torch.argsort(candidates.t().long(), dim=1, stable=True).contiguous().view(
        tiles, tiles, -1)
    ones = torch.ones(by_position_and_value.shape[-1], dtype=torch.int32)
    agreements = torch.zeros(len(candidates), dtype=torch.int32)
    # Far above any real count (at most size x tiles), so a chosen candidate is never chosen again.
    taken = torch.iinfo(torch.int32).max // 2
    chosen = [0]  # the shuffled order's first candidate: a uniformly random start
    while True:
        latest = candidates[chosen[-1]].tolist()
        agreements[chosen[-1]] = taken
        if len(chosen) == size:
            break
        for position, value in enumerate(latest):
            agreements.index_add_(0, by_position_and_value[position, value], ones)
        chosen.append(int(agreements.argmin()))  # the first of equal minima
    return candidates[chosen].long()


def default_cache_dir() -> Path:
    """$SSL_RUNNER_CACHE (as for decoded data sets), else $XDG_CACHE_HOME/ssl_runner, else ~/.cache/ssl_runner."""
    if os.environ.get("SSL_RUNNER_CACHE"):
        return Path(os.environ["SSL_RUNNER_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssl_runner"


def permutation_set_file(size: int, tiles: int = 9, seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Where `cached_permutation_set` keeps the set for (size, tiles, seed)."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"jigsaw_permutations_v{PERMUTATION_SET_VERSION}_tiles{tiles}_size{size}_seed{seed}.pt"


def _is_permutation_set(value: object, size: int, tiles: int) -> bool:
    return (isinstance(value, Tensor) and value.dtype == torch.long and value.shape == (size, tiles)
            and bool((value.sort(dim=1).values == torch.arange(tiles)).all()))


def cached_permutation_set(size: int, tiles: int = 9, seed: int = 0, cache_dir: str | Path | None = None) -> Tensor:
    """`hamming_permutation_set(size, tiles, seed)`, generated once and then
    loaded from a .pt file in `cache_dir` (default: `default_cache_dir()`).

    A file that cannot be read or does not hold such a set is regenerated; a
    cache that cannot be written only costs the generation next time.
    """
    _check_set_arguments(size, tiles)
    path = permutation_set_file(size, tiles, seed, cache_dir)
    if path.exists():
        try:
            permutations = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a truncated or foreign file: any unpickling error
            log.warning("regenerating the Jigsaw permutation set: could not read %s (%s: %s)",
                        path, type(err).__name__, err)
        else:
            if _is_permutation_set(permutations, size, tiles):
                return permutations
            log.warning("regenerating the Jigsaw permutation set: %s does not hold %d permutations of %d tiles",
                        path, size, tiles)
    permutations = hamming_permutation_set(size, tiles, seed)
    # Written under a temporary name and renamed: processes that generate the
    # same set at once (one per GPU) never read a half-written file.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(permutations, path)
    except OSError as err:
        log.warning("could not cache the Jigsaw permutation set in %s: %s", path, err)
    return permutations


__all__ = ["MAX_TILES", "all_permutations", "cached_permutation_set", "default_cache_dir", "hamming_permutation_set",
           "permutation_set_file"]
