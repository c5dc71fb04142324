"""NT-Xent against hand-computed values and a per-anchor reference."""

import math

import pytest
import torch

from ssl_runner.losses import nt_xent_loss


def test_nt_xent_matches_hand_computation():
    # Unit vectors, so cosine similarity is the plain dot product.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    tau = 0.5
    # Similarities among the 4 embeddings a=z1[0], b=z1[1], c=z2[0], d=z2[1]:
    # ab=0, ac=0.6, ad=0.8, bc=0.8, bd=0.6, cd=0.96. Positives: a-c, b-d.
    e = lambda s: math.exp(s / tau)  # noqa: E731
    loss_a = -math.log(e(0.6) / (e(0.0) + e(0.6) + e(0.8)))
    loss_b = -math.log(e(0.6) / (e(0.0) + e(0.8) + e(0.6)))
    loss_c = -math.log(e(0.6) / (e(0.6) + e(0.8) + e(0.96)))
    loss_d = -math.log(e(0.6) / (e(0.8) + e(0.6) + e(0.96)))
    expected = (loss_a + loss_b + loss_c + loss_d) / 4
    assert nt_xent_loss(z1, z2, tau).item() == pytest.approx(expected, rel=1e-6)


def _reference(z1, z2, tau):
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(2 * n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / tau) / denom)
    return total / (2 * n)


def test_nt_xent_matches_per_anchor_reference_and_is_symmetric():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    loss = nt_xent_loss(z1, z2, 0.2)
    assert loss.item() == pytest.approx(_reference(z1, z2, 0.2), rel=1e-5)
    assert nt_xent_loss(z2, z1, 0.2).item() == pytest.approx(loss.item(), rel=1e-6)
    # Scale-invariant: embeddings are normalised first.
    assert nt_xent_loss(3 * z1, 0.5 * z2, 0.2).item() == pytest.approx(loss.item(), rel=1e-5)


def test_nt_xent_gradient_flows_to_both_views_and_perfect_pairs_score_low():
    z1 = torch.eye(4, requires_grad=True)
    z2 = torch.eye(4, requires_grad=True)
    loss = nt_xent_loss(z1, z2, 0.1)
    loss.backward()
    assert z1.grad is not None and z2.grad is not None
    # Orthogonal images, identical views: near-zero loss at a low temperature.
    assert loss.item() < 1e-3


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3), 0.5)
