"""The momentum methods' shared pieces and losses, against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_runner.losses import info_nce_loss, nce_loss, negative_cosine_loss, normalized_mse_loss
from ssl_runner.models.momentum import KeyQueue, MemoryBank, MomentumEncoder, momentum_at


def test_queue_wraps_around_overwriting_the_oldest_keys():
    queue = KeyQueue(size=5, dim=2)
    keys = F.normalize(torch.randn(7, 2), dim=1)
    queue.enqueue(keys[:3])
    assert torch.allclose(queue.keys[:3], keys[:3]) and int(queue.ptr) == 3
    queue.enqueue(keys[3:])  # 4 keys into slots 3, 4, 0, 1
    assert torch.allclose(queue.keys, torch.stack([keys[5], keys[6], keys[2], keys[3], keys[4]]))
    assert int(queue.ptr) == 2
    # Keys are stored normalised, whatever their length.
    queue.enqueue(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(queue.keys[2], torch.tensor([0.6, 0.8])) and int(queue.ptr) == 3


def test_queue_state_survives_a_checkpoint_round_trip(tmp_path):
    queue = KeyQueue(size=6, dim=3)
    queue.enqueue(torch.randn(4, 3))
    torch.save(queue.state_dict(), tmp_path / "q.pt")
    restored = KeyQueue(size=6, dim=3)
    restored.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True), strict=True)
    assert torch.equal(restored.keys, queue.keys) and int(restored.ptr) == 4


def test_ema_update_follows_its_formula_and_the_copy_gets_no_gradient():
    online = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    target = MomentumEncoder(online)
    before = [p.clone() for p in target.net.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update(online, momentum=0.9)
    for t, b, o in zip(target.net.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
        assert not t.requires_grad
    out = target(torch.randn(4, 3))
    assert not out.requires_grad
    # Buffers are its own: the running statistics come from its forward passes only.
    assert not torch.equal(target.net[1].running_mean, online[1].running_mean)


def test_momentum_schedules():
    assert momentum_at(500, 1000, 0.99, "constant") == 0.99
    assert momentum_at(0, 1000, 0.996, "cosine") == pytest.approx(0.996)
    assert momentum_at(500, 1000, 0.996, "cosine") == pytest.approx(0.998)
    assert momentum_at(1000, 1000, 0.996, "cosine") == pytest.approx(1.0)


def test_memory_bank_update_mixes_and_renormalises():
    bank = MemoryBank(size=4, dim=2)
    old = bank.bank.clone()
    f = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    bank.update(torch.tensor([1, 3]), f, momentum=0.5)
    for row, fi in zip((1, 3), f):
        expected = F.normalize(0.5 * old[row] + 0.5 * fi, dim=0)
        assert torch.allclose(bank.bank[row], expected)
    assert torch.equal(bank.bank[0], old[0]) and torch.equal(bank.bank[2], old[2])


def test_info_nce_puts_the_positive_at_index_zero():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    tau = 0.2
    logits = [0.6 / tau, 0.0 / tau, -1.0 / tau]
    expected = -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert info_nce_loss(q, k, queue, tau).item() == pytest.approx(expected, rel=1e-6)
    # The key and the queue get no gradient.
    k.requires_grad_(True)
    queue.requires_grad_(True)
    qq = q.clone().requires_grad_(True)
    info_nce_loss(qq, k, queue, tau).backward()
    assert k.grad is None and queue.grad is None and qq.grad is not None


def test_negative_cosine_and_normalized_mse_stop_the_target_gradient():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    z = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    cos = torch.tensor([1 / math.sqrt(2), -1.0])
    assert negative_cosine_loss(p, z).item() == pytest.approx(-cos.mean().item(), rel=1e-6)
    assert normalized_mse_loss(p, z).item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-6)
    (negative_cosine_loss(p, z) + normalized_mse_loss(p, z)).backward()
    assert z.grad is None and p.grad is not None


def test_nce_loss_against_hand_computation():
    pos = torch.tensor([1.0])
    noise = torch.tensor([[0.0, -1.0]])
    log_z, n = 0.5, 10
    pn = 2 / n  # m noise samples x uniform noise probability
    p1 = math.exp(1.0 - log_z)
    pa, pb = math.exp(0.0 - log_z), math.exp(-1.0 - log_z)
    expected = -(math.log(p1 / (p1 + pn)) + math.log(pn / (pa + pn)) + math.log(pn / (pb + pn)))
    assert nce_loss(pos, noise, log_z, n).item() == pytest.approx(expected, rel=1e-5)
