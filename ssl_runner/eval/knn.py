"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018 (NPID, Sec. 3.4) that SSL papers report:
cosine similarity to every training feature, the k most similar vote for their
class with weight exp(similarity / temperature).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (N_test x num_classes) from a weighted vote of the k nearest
    training features; features need not be normalised."""
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        similarity, neighbours = (test @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, device=test.device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_top1(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
             num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy in percent."""
    scores = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(1) == test_labels).float().mean().item()
