"""NT-Xent against hand-computed values and a per-anchor reference; NPID's
NCE loss and its normaliser against direct float64 formulas."""

import math

import pytest
import torch

from ssl_runner.losses import nce_loss, nt_xent_loss
from ssl_runner.methods.npid import nce_log_normaliser


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


def _direct_nce_loss(pos, noise, log_z, num_data, eps=0.0):
    """The NCE loss as its definition reads: h = P / (P + m P_n), P = exp(logit) / Z,
    -log(h + eps) - sum log(1 - h + eps) (eps 1e-7: the floored form it replaced)."""
    noise_mass = noise.shape[1] / num_data
    p_pos, p_noise = torch.exp(pos - log_z), torch.exp(noise - log_z)
    log_h = torch.log(p_pos / (p_pos + noise_mass) + eps)
    log_not_h = torch.log(noise_mass / (p_noise + noise_mass) + eps)
    return -(log_h + log_not_h.sum(dim=1)).mean()


def test_nce_loss_matches_the_direct_formula_and_its_analytic_gradient():
    gen = torch.Generator().manual_seed(0)
    pos = (3 * torch.rand(5, generator=gen, dtype=torch.float64) - 1).requires_grad_()
    noise = (4 * torch.rand(5, 7, generator=gen, dtype=torch.float64) - 2).requires_grad_()
    log_z, num_data = 1.3, 40
    loss = nce_loss(pos, noise, log_z, num_data)
    assert loss.item() == pytest.approx(_direct_nce_loss(pos, noise, log_z, num_data).item(), rel=1e-6)
    assert 1.0 < loss.item() < 20.0  # moderate values: neither term near 0
    loss.backward()
    # d(-log h)/d logit = -(1 - h) for the positive, d(-log(1 - h))/d logit = h
    # for a noise sample; the loss is a mean over the batch of 5.
    noise_mass = 7 / num_data
    h = lambda logit: torch.sigmoid(logit.detach() - log_z - math.log(noise_mass))  # noqa: E731
    torch.testing.assert_close(pos.grad, -(1 - h(pos)) / 5, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(noise.grad, h(noise) / 5, rtol=1e-6, atol=1e-12)


def test_nce_loss_keeps_the_whole_gradient_of_a_hard_positive():
    """A positive with h = 1e-9: -log h has gradient -(1 - h) ~ -1. The floored
    log(h + 1e-7) scaled it by h / (h + 1e-7), to about -0.0099."""
    log_z, num_data, m = 2.0, 1000, 4
    h = 1e-9
    logit = math.log(h / (1 - h)) + log_z + math.log(m / num_data)
    grads = {}
    for name, loss_fn in (("log space", nce_loss), ("floored", lambda *a: _direct_nce_loss(*a, eps=1e-7))):
        pos = torch.tensor([logit], dtype=torch.float64, requires_grad=True)
        loss = loss_fn(pos, torch.zeros(1, m, dtype=torch.float64), log_z, num_data)
        assert math.isfinite(loss.item())
        loss.backward()
        grads[name] = pos.grad.item()
    assert grads["log space"] == pytest.approx(-(1 - h), abs=1e-6)
    assert grads["floored"] == pytest.approx(-(1 - h) * h / (h + 1e-7), rel=1e-3)  # ~ -0.0099: the lost gradient
    assert abs(grads["floored"] - -(1 - h)) > 0.9


def test_nce_loss_is_finite_at_extreme_logits():
    pos = torch.tensor([100.0, -100.0], requires_grad=True)
    noise = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 3.0]], requires_grad=True)
    assert not math.isfinite(_direct_nce_loss(pos, noise, 0.5, 50).item())  # exp(100) overflows float32
    loss = nce_loss(pos, noise, 0.5, 50)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pos.grad).all() and torch.isfinite(noise.grad).all()
    # s = logit - log Z - log(m P_n) = logit - 0.5 - log(3 / 50); the positive at
    # +100 (h = 1) and the noise at -100 (h = 0) cost nothing; the positive at
    # -100 and the noise at +100 cost |s| each.
    s = lambda logit: logit - 0.5 - math.log(3 / 50)  # noqa: E731
    softplus = lambda x: math.log1p(math.exp(-abs(x))) + max(x, 0.0)  # noqa: E731
    expected = (softplus(-s(-100.0)) + 2 * softplus(s(100.0)) + softplus(s(0.0)) + softplus(s(3.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(pos.grad, torch.tensor([0.0, -0.5]), atol=1e-6, rtol=0)


def test_nce_normaliser_averages_all_columns_as_npid_code_does():
    """lemniscate.pytorch's NCEAverage: Z = out.mean() * outputSize, `out` the
    batch x (K + 1) matrix of exp(v.f / tau), the positive's column included."""
    pos = torch.tensor([2.0, 0.0])
    noise = torch.tensor([[0.0, math.log(2.0)], [math.log(3.0), -math.log(2.0)]])
    num_data = 100
    # exp: [e^2, 1, 2] and [1, 3, 0.5]: 6 columns.
    z = num_data * (math.exp(2.0) + 1 + 2 + 1 + 3 + 0.5) / 6
    assert nce_log_normaliser(pos, noise, num_data) == pytest.approx(math.log(z), rel=1e-6)
    noise_only = num_data * (1 + 2 + 3 + 0.5) / 4  # what the noise columns alone would give
    assert abs(math.log(z) - math.log(noise_only)) > 0.3
    # Where exp(logit) overflows float32: every logit 100, so Z = N e^100.
    big = nce_log_normaliser(torch.full((2,), 100.0), torch.full((2, 2), 100.0), num_data)
    assert big == pytest.approx(math.log(num_data) + 100.0, rel=1e-6)
