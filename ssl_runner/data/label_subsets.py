"""The labelled subsets of the semi-supervised stages: a fraction of each
class's training images, as in SimCLR's semi-supervised protocol (Chen et al.
2020, Sec. 6 and Appendix B.5, which uses fixed 1 % and 10 % ImageNet
subsets, the smaller inside the larger)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


# The semi-supervised stages: semi_<tag> (settings eval.semi.epochs_<tag>) and its fraction of the labels.
LABEL_FRACTIONS = {"1pct": 0.01, "10pct": 0.1}


def label_fraction_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of `fraction` of the labelled items: class-balanced
    (each class keeps round(fraction x its count), halves rounded up, at
    least one), seeded, and nested: with the same seed and labels, a smaller
    fraction's subset lies inside a larger one's, since every class draws one
    seeded permutation whatever the fraction and keeps a prefix of it."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a label fraction is in (0, 1], not {fraction}")
    if bool((labels < 0).any()):
        raise ValueError("a label subset needs every item labelled (UNLABELLED found)")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():  # sorted: the draws come in class order
        members = (labels == c).nonzero().flatten()
        order = torch.randperm(len(members), generator=generator)
        take = max(1, math.floor(fraction * len(members) + 0.5))
        chosen.append(members[order[:take]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen).sort().values
