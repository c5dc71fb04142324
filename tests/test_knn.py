"""Weighted kNN against a brute-force reference."""

import math

import pytest
import torch

from ssl_runner.eval.knn import knn_predict, knn_top1


def brute_force_knn(train_f, train_l, test_f, num_classes, k, tau):
    preds = []
    for x in test_f:
        cosine = torch.nn.functional.cosine_similarity
        sims = [(float(cosine(x, t, dim=0)), int(lbl)) for t, lbl in zip(train_f, train_l)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, lbl in sims[:k]:
            votes[lbl] += math.exp(s / tau)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_knn_matches_brute_force_on_random_features():
    gen = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 8, generator=gen)
    train_l = torch.randint(0, 3, (60,), generator=gen)
    train_f = centers[train_l] + 0.9 * torch.randn(60, 8, generator=gen)
    test_l = torch.randint(0, 3, (25,), generator=gen)
    test_f = centers[test_l] + 0.9 * torch.randn(25, 8, generator=gen)
    for k in (1, 5, 20):
        scores = knn_predict(train_f, train_l, test_f, 3, k=k, temperature=0.1, chunk_size=7)
        assert torch.equal(scores.argmax(1), brute_force_knn(train_f, train_l, test_f, 3, k, 0.1))
    top1 = knn_top1(train_f, train_l, test_f, test_l, 3, k=5, temperature=0.1)
    expected = 100.0 * (brute_force_knn(train_f, train_l, test_f, 3, 5, 0.1) == test_l).float().mean().item()
    assert top1 == pytest.approx(expected)


def test_knn_weights_votes_by_similarity_not_count():
    # Two far neighbours of class 0 against one very close neighbour of class 1:
    # with k=3 and a low temperature the close one must win.
    train_f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    train_l = torch.tensor([1, 0, 0])
    test_f = torch.tensor([[1.0, 0.1]])
    scores = knn_predict(train_f, train_l, test_f, 2, k=3, temperature=0.05)
    assert scores.argmax(1).item() == 1
    sim_close = 1.0 / math.sqrt(1.01)
    sim_far = 0.1 / math.sqrt(1.01)
    assert scores[0, 1].item() == pytest.approx(math.exp(sim_close / 0.05), rel=1e-4)
    assert scores[0, 0].item() == pytest.approx(2 * math.exp(sim_far / 0.05), rel=1e-4)


def test_k_larger_than_train_set_uses_all():
    scores = knn_predict(torch.eye(3), torch.tensor([0, 1, 1]), torch.eye(3), 2, k=200, temperature=1.0)
    assert scores.shape == (3, 2)
