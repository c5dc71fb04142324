"""LARS, parameter groups, lr scaling, schedules and the optimizer factory,
checked against values worked out by hand."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from ssl_runner.optim import (
    LARS,
    build_optimizer,
    build_scheduler,
    constant_factor,
    scale_lr,
    split_decay_groups,
    steps_factor,
    warmup_cosine_factor,
)


def _set_grad(param: torch.Tensor, values: list) -> None:
    param.grad = torch.tensor(values, dtype=param.dtype)


def _assert_values(tensor: torch.Tensor, expected: list) -> None:
    assert tensor.detach().tolist() == pytest.approx(expected, rel=1e-6, abs=1e-9)


# ---- LARS ----------------------------------------------------------------------------

def _two_group_lars(nesterov: bool, foreach: bool = False) -> tuple:
    """An adapted group (no `lars_exclude` key, so the default) and an excluded
    group with its own lr and an `lr_scale` LARS must ignore."""
    adapted = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    excluded = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = LARS(
        [{"params": [adapted]},
         {"params": [excluded], "lars_exclude": True, "lr": 0.2, "lr_scale": 10.0}],
        lr=0.1, momentum=0.9, weight_decay=0.1, eta=0.01, nesterov=nesterov, foreach=foreach,
    )
    return adapted, excluded, optimizer


def _lars_two_steps(nesterov: bool, foreach: bool = False) -> tuple:
    adapted, excluded, optimizer = _two_group_lars(nesterov, foreach)
    history = []
    for _ in range(2):
        _set_grad(adapted, [-0.3, 0.6])
        _set_grad(excluded, [0.5, 0.5])
        optimizer.step()
        history.append((adapted.detach().clone(), excluded.detach().clone()))
    return history


# foreach=True: the multi-tensor step a GPU takes by default, played on the CPU.
@pytest.mark.parametrize("foreach", [False, True])
def test_lars_matches_hand_computation_with_momentum_and_weight_decay(foreach):
    (adapted_1, excluded_1), (adapted_2, excluded_2) = _lars_two_steps(nesterov=False, foreach=foreach)
    # Adapted, step 1: d = g + 0.1 p = [-0.3 + 0.3, 0.6 + 0.4] = [0, 1]; ||d|| = 1, ||p|| = 5,
    # trust = 0.01 * 5 / 1 = 0.05, u = buf = [0, 0.05], p = [3, 4 - 0.1 * 0.05].
    _assert_values(adapted_1, [3.0, 3.995])
    # Step 2: d = [0, 0.6 + 0.3995] points along the second axis, so u = [0, 0.01 * ||p1||].
    u2 = 0.01 * math.sqrt(3.0 ** 2 + 3.995 ** 2)
    buf2 = 0.9 * 0.05 + u2
    _assert_values(adapted_2, [3.0, 3.995 - 0.1 * buf2])
    # Excluded (lr 0.2, no trust ratio), step 1: u = g + 0.1 q = [0.6, 0.3], q = q - 0.2 u.
    _assert_values(excluded_1, [0.88, -2.06])
    # Step 2: u = [0.5 + 0.088, 0.5 - 0.206] = [0.588, 0.294]; buf = 0.9 [0.6, 0.3] + u = [1.128, 0.564].
    _assert_values(excluded_2, [0.88 - 0.2 * 1.128, -2.06 - 0.2 * 0.564])


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_nesterov_matches_hand_computation(foreach):
    (adapted_1, excluded_1), (adapted_2, excluded_2) = _lars_two_steps(nesterov=True, foreach=foreach)
    # Step 1: u = buf = [0, 0.05]; step = u + 0.9 buf = [0, 0.095].
    _assert_values(adapted_1, [3.0, 4.0 - 0.1 * 0.095])
    u2 = 0.01 * math.sqrt(3.0 ** 2 + 3.9905 ** 2)
    buf2 = 0.9 * 0.05 + u2
    _assert_values(adapted_2, [3.0, 3.9905 - 0.1 * (u2 + 0.9 * buf2)])
    # Excluded, step 1: u = buf = [0.6, 0.3], step = 1.9 u = [1.14, 0.57].
    _assert_values(excluded_1, [1.0 - 0.2 * 1.14, -2.0 - 0.2 * 0.57])
    q1 = [1.0 - 0.228, -2.0 - 0.114]
    u2_excluded = [0.5 + 0.1 * q1[0], 0.5 + 0.1 * q1[1]]
    buf2_excluded = [0.9 * 0.6 + u2_excluded[0], 0.9 * 0.3 + u2_excluded[1]]
    _assert_values(excluded_2, [q - 0.2 * (u + 0.9 * b) for q, u, b in zip(q1, u2_excluded, buf2_excluded)])


def test_lars_foreach_step_equals_the_loop_on_a_network():
    """Three steps on a network with a zero-initialised tensor (trust 1) and
    an excluded group: the GPU's multi-tensor step and the CPU's loop agree."""
    def trained(foreach: bool) -> list:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        nn.init.zeros_(net[4].bias)
        decay = [p for p in net.parameters() if p.dim() > 1]
        no_decay = [p for p in net.parameters() if p.dim() <= 1]
        optimizer = LARS([{"params": decay}, {"params": no_decay, "lars_exclude": True}], lr=0.5, momentum=0.9,
                         weight_decay=1e-4, eta=0.02, nesterov=True, foreach=foreach)
        data = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            optimizer.zero_grad()
            net(data).square().mean().backward()
            optimizer.step()
        return [p.detach().clone() for p in net.parameters()]

    for loop, multi in zip(trained(False), trained(True)):
        torch.testing.assert_close(multi, loop, rtol=1e-6, atol=1e-7)



def test_lars_zero_weight_gets_trust_one():
    zero = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = LARS([zero], lr=0.1, momentum=0.9, weight_decay=0.1, eta=0.001)
    _set_grad(zero, [0.3, 0.4])
    optimizer.step()
    # d = g (w is zero); a trust ratio of eta * 0 would freeze it forever, trust 1 moves it by lr * g.
    _assert_values(zero, [-0.03, -0.04])


def test_lars_eps_enters_the_trust_ratio():
    param = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    optimizer = LARS([param], lr=1.0, momentum=0.0, eta=0.01, eps=1.0)
    _set_grad(param, [0.0, 1.0])
    optimizer.step()
    # trust = 0.01 * 5 / (1 + 1) = 0.025.
    _assert_values(param, [3.0, 4.0 - 0.025])


def test_lars_closure_and_state_dict_round_trip():
    adapted, excluded, optimizer = _two_group_lars(nesterov=False)
    targets = torch.tensor([-0.3, 0.6], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (adapted * targets[0]).sum() + (excluded * targets[1]).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == pytest.approx(-0.3 * 3 + 0.6 * 4 + 0.5 * 1 - 0.5 * 2)
    _assert_values(adapted, [3.0, 3.995])

    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)
    resumed_adapted = nn.Parameter(adapted.detach().clone())
    resumed_excluded = nn.Parameter(excluded.detach().clone())
    resumed = LARS([{"params": [resumed_adapted]}, {"params": [resumed_excluded], "lars_exclude": True}],
                   lr=0.1, momentum=0.9, weight_decay=0.1, eta=0.01)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    assert resumed.param_groups[1]["lr"] == 0.2
    _assert_values(resumed.state[resumed_adapted]["momentum_buffer"], [0.0, 0.05])

    optimizer.step(closure)
    _set_grad(resumed_adapted, [-0.3, 0.6])
    _set_grad(resumed_excluded, [0.5, 0.5])
    resumed.step()
    _assert_values(resumed_adapted, adapted.tolist())
    _assert_values(resumed_excluded, excluded.tolist())
    _assert_values(excluded, [0.88 - 0.2 * 1.128, -2.06 - 0.2 * 0.564])


# ---- parameter groups -----------------------------------------------------------------

def _ids(params) -> list:
    return [id(p) for p in params]


def test_split_decay_groups_membership():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[2].bias.requires_grad_(False)
    decay, no_decay = split_decay_groups(model, weight_decay=1e-4, lr_scale=0.5, name="enc")
    assert _ids(decay["params"]) == _ids([model[0].weight, model[2].weight])
    assert _ids(no_decay["params"]) == _ids([model[0].bias, model[1].weight, model[1].bias])
    assert {k: v for k, v in decay.items() if k != "params"} == {
        "weight_decay": 1e-4, "lars_exclude": False, "lr_scale": 0.5, "name": "enc.decay"}
    assert {k: v for k, v in no_decay.items() if k != "params"} == {
        "weight_decay": 0.0, "lars_exclude": True, "lr_scale": 0.5, "name": "enc.no_decay"}


def test_split_decay_groups_without_exclusion_is_one_group():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    (group,) = split_decay_groups(model, weight_decay=1e-4, exclude_bias_and_norm=False)
    assert _ids(group["params"]) == _ids([model[0].bias, model[1].weight, model[1].bias,
                                          model[2].weight, model[2].bias])
    assert group["weight_decay"] == 1e-4 and group["lars_exclude"] is False and group["name"] == "decay"


def test_split_decay_groups_norm_layers_and_1d_params_and_empty_groups():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 3, bias=False)
            self.norm = nn.LayerNorm(3)
            self.group_norm = nn.GroupNorm(1, 3)
            self.scale = nn.Parameter(torch.ones(3))

    module = Scaled()
    decay, no_decay = split_decay_groups(module, weight_decay=0.1)
    assert _ids(decay["params"]) == _ids([module.proj.weight])
    assert set(_ids(no_decay["params"])) == set(_ids([module.norm.weight, module.norm.bias, module.group_norm.weight,
                                                      module.group_norm.bias, module.scale]))
    (only,) = split_decay_groups(nn.BatchNorm2d(4), weight_decay=0.1, name="bn")
    assert only["name"] == "bn.no_decay" and only["lars_exclude"] is True
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert split_decay_groups(frozen, weight_decay=0.1) == []


# ---- lr scaling -----------------------------------------------------------------------

def test_scale_lr_rules():
    assert scale_lr(0.3, 512) == pytest.approx(0.6)
    assert scale_lr(0.3, 128, reference_batch=256, rule="linear") == pytest.approx(0.15)
    assert scale_lr(0.1, 1024, rule="sqrt") == pytest.approx(0.2)
    assert scale_lr(0.075, 4096, reference_batch=1, rule="sqrt") == pytest.approx(4.8)
    assert scale_lr(0.3, 4096, rule="none") == 0.3
    with pytest.raises(ValueError, match="linear, sqrt, none"):
        scale_lr(0.3, 256, rule="cubic")


# ---- schedules ------------------------------------------------------------------------

def test_warmup_cosine_factor_hand_values():
    def factor(step: int) -> float:
        return warmup_cosine_factor(step, total_steps=110, warmup_steps=10, warmup_start_ratio=0.1, final_ratio=0.01)

    assert factor(0) == pytest.approx(0.1)
    assert factor(5) == pytest.approx(0.55)  # 0.1 + 0.9 * 5 / 10
    assert factor(10) == pytest.approx(1.0)
    assert factor(35) == pytest.approx(0.855017856687341)  # 0.01 + 0.99 * 0.5 * (1 + cos(pi / 4))
    assert factor(60) == pytest.approx(0.505)  # midpoint: 0.01 + 0.99 / 2
    assert factor(110) == pytest.approx(0.01)
    assert factor(500) == pytest.approx(0.01)
    after_warmup = [factor(step) for step in range(10, 120)]
    assert all(later <= earlier for earlier, later in zip(after_warmup, after_warmup[1:]))
    assert after_warmup[0] > after_warmup[-1]


def test_warmup_cosine_factor_edge_cases():
    assert warmup_cosine_factor(0, total_steps=4, warmup_steps=0) == 1.0
    assert warmup_cosine_factor(2, total_steps=4, warmup_steps=0) == pytest.approx(0.5)
    # Warmup longer than training: only the warmup line, then 1.
    assert warmup_cosine_factor(5, total_steps=5, warmup_steps=10, warmup_start_ratio=0.1) == pytest.approx(0.55)
    assert warmup_cosine_factor(10, total_steps=5, warmup_steps=10) == 1.0
    assert warmup_cosine_factor(20, total_steps=5, warmup_steps=10) == 1.0


def test_constant_factor():
    assert constant_factor(0, total_steps=100, warmup_steps=4, warmup_start_ratio=0.2) == pytest.approx(0.2)
    assert constant_factor(2, total_steps=100, warmup_steps=4, warmup_start_ratio=0.2) == pytest.approx(0.6)
    assert constant_factor(4, total_steps=100, warmup_steps=4) == 1.0
    assert constant_factor(99, total_steps=100, warmup_steps=4) == 1.0
    assert constant_factor(0, total_steps=100, warmup_steps=0) == 1.0


def test_steps_factor_hand_values():
    def factor(step: int) -> float:
        return steps_factor(step, total_steps=20, warmup_steps=4, warmup_start_ratio=0.2, milestones=(6, 10),
                            gamma=0.5)

    assert [factor(s) for s in (0, 2, 4, 5)] == pytest.approx([0.2, 0.6, 1.0, 1.0])  # 0.2 + 0.8 * s / 4
    assert [factor(s) for s in (6, 9, 10, 19, 100)] == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.25])
    # No milestones: the constant schedule; a milestone inside the warmup multiplies it.
    assert steps_factor(7, total_steps=20, warmup_steps=0) == 1.0
    assert steps_factor(1, total_steps=20, warmup_steps=4, milestones=(0,), gamma=0.1) == pytest.approx(0.025)


def test_steps_schedule_of_the_rotnet_recipe_drops_at_its_epochs():
    """experiment=rotnet_cifar10: lr 0.1 at batch 128, x0.2 at epochs 60, 120,
    160, stepped per batch (10 steps per epoch here)."""
    from types import SimpleNamespace

    from conftest import compose_config

    from ssl_runner.methods import build_method

    cfg = compose_config(["experiment=rotnet_cifar10", "backbone.width=0.05", "trainer=cpu"])
    method = build_method(cfg, num_classes=10)
    method._trainer = SimpleNamespace(estimated_stepping_batches=2000, max_epochs=200, world_size=1)
    conf = method.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert optimizer.param_groups[0]["weight_decay"] == 5e-4  # on every parameter, BatchNorm's too
    expected = {0: 0.1, 599: 0.1, 600: 0.02, 1199: 0.02, 1200: 0.004, 1599: 0.004, 1600: 0.0008, 1999: 0.0008}
    seen = {}
    for step in range(2000):
        if step in expected:
            seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected)


def _two_peak_sgd() -> torch.optim.Optimizer:
    scaled, probe = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    return build_optimizer("sgd", [{"params": [scaled], "lr_scale": 0.5}, {"params": [probe], "lr": 0.02}], lr=0.4)


@pytest.mark.parametrize("name, factors", [
    ("warmup_cosine", [0.0, 0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 6)]),
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
])
def test_build_scheduler_drives_each_group_from_its_own_peak(name, factors):
    optimizer = _two_peak_sgd()
    scheduler = build_scheduler(optimizer, name, total_steps=8, warmup_steps=2)
    for factor in factors:
        assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.2 * factor, 0.02 * factor])
        for group in optimizer.param_groups:
            group["params"][0].grad = torch.ones(2)
        optimizer.step()
        scheduler.step()


def test_build_scheduler_state_dict_round_trip_and_unknown_name():
    optimizer = _two_peak_sgd()
    scheduler = build_scheduler(optimizer, "warmup_cosine", total_steps=8, warmup_steps=2)
    optimizer.step()
    scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    resumed_optimizer = _two_peak_sgd()
    resumed = build_scheduler(resumed_optimizer, "warmup_cosine", total_steps=8, warmup_steps=2)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    resumed_optimizer.step()
    resumed.step()
    assert [group["lr"] for group in resumed_optimizer.param_groups] == pytest.approx([0.2, 0.02])
    with pytest.raises(ValueError, match="warmup_cosine, constant"):
        build_scheduler(optimizer, "step", total_steps=8, warmup_steps=2)


# ---- optimizer factory ----------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_class_and_group_lrs(name, cls):
    decayed, probe = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    groups = [{"params": [decayed], "weight_decay": 0.1, "lars_exclude": False, "lr_scale": 0.5, "name": "enc.decay"},
              {"params": [probe], "lr": 0.01, "weight_decay": 0.0, "lars_exclude": True, "name": "online_probe"}]
    optimizer = build_optimizer(name, groups, lr=0.4, weight_decay=0.05)
    assert type(optimizer) is cls
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.2, 0.01])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert [g["name"] for g in optimizer.param_groups] == ["enc.decay", "online_probe"]
    assert "lr" not in groups[0]  # the caller's dicts are copied, not filled in


def test_build_optimizer_extra_keys_do_not_change_sgd_or_adamw_steps():
    def first_step(name: str) -> list:
        param = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
        optimizer = build_optimizer(name, [{"params": [param], "weight_decay": 0.1, "lars_exclude": True,
                                            "lr_scale": 1.0, "name": "head.decay"}], lr=0.1, weight_decay=0.0)
        param.grad = torch.tensor([0.5], dtype=torch.float64)
        optimizer.step()
        return param.tolist()

    # SGD: the group's own decay, 0.1, not the default 0.0: 1 - 0.1 * (0.5 + 0.1 * 1).
    assert first_step("sgd") == pytest.approx([0.94])
    # AdamW: decoupled decay 1 - 0.1 * 0.1, then a first Adam step of lr * g / |g|.
    assert first_step("adamw") == pytest.approx([0.99 - 0.1], rel=1e-6)


def test_build_optimizer_default_weight_decay_and_unknown_name():
    param = nn.Parameter(torch.ones(1))
    optimizer = build_optimizer("sgd", [{"params": [param]}], lr=0.1, momentum=0.0, weight_decay=0.05)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and optimizer.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="sgd, lars, adamw"):
        build_optimizer("adam", [{"params": [param]}], lr=0.1)
