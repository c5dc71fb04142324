"""LooC: leave-one-out views share exactly one augmentation with the query,
the per-space positives and negatives follow the paper, each space's queue
takes its own head's keys; the probes and LooC++ stage."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config

from ssl_runner.errors import UserError
from ssl_runner.losses import info_nce_loss, leave_one_out_info_nce, looc_loss, looc_masks
from ssl_runner.views.augmentations import Rotation90
from ssl_runner.views.leave_one_out import LeaveOneOutViews
from ssl_runner.views.recipe import ViewRecipe

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _recipe():
    return ViewRecipe.simclr(16, MEAN, STD, rotation_p=0.75)


def test_rotation_turns_images_by_the_sampled_quarter_turns():
    images = torch.rand(8, 3, 16, 16)
    turns = torch.tensor([0, 1, 2, 3, 0, 3, 2, 1])
    out = Rotation90().apply(images, {"quarter_turns": turns})
    for image, k, rotated in zip(images, turns, out):
        torch.testing.assert_close(rotated, torch.rot90(image, int(k), dims=(1, 2)))
    # p = 0.75: each of the four orientations about equally often.
    counts = torch.bincount(Rotation90(0.75).sample(40000, 16, 16, generator=torch.Generator().manual_seed(0))[
        "quarter_turns"], minlength=4).float() / 40000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.01)


@pytest.mark.parametrize("augmentations", [["color", "rotation"], ["rotation", "color"], ["color"]])
def test_each_leave_one_out_key_copies_only_its_augmentation_from_the_query(augmentations):
    views = LeaveOneOutViews(_recipe(), augmentations)
    n = 2000
    params = views.sample(n, 20, 20, generator=torch.Generator().manual_seed(0))
    assert len(params) == len(augmentations) + 2
    query = params[0]
    copied_by = {"color": ("color", "grayscale"), "rotation": ("rotation",)}

    def same(a, b):  # per image: every parameter tensor of an augmentation equal
        return torch.stack([(a[k] == b[k]).reshape(n, -1).all(1) for k in a]).all(0)

    for i, name in enumerate(augmentations):
        key = params[i + 2]
        for part in ("crop", "flip", "color", "grayscale", "rotation"):
            agree = same(query[part], key[part]).float().mean()
            if part in copied_by[name]:
                assert agree == 1.0, (name, part)
            else:
                # Drawn afresh: agreement only by chance (a coin of p 0.5 at most agrees half the time;
                # grayscale's p 0.2 coin agrees 68 % of the time, the 4 rotations 62.5 %).
                assert agree < 0.75, (name, part, float(agree))
    # k0 shares nothing systematically with q.
    assert same(query["crop"], params[1]["crop"]).float().mean() < 0.01
    assert same(query["color"], params[1]["color"]).float().mean() < 0.25


def test_leave_one_out_views_are_made_from_their_parameters():
    torch.manual_seed(0)
    views = LeaveOneOutViews(_recipe(), ["rotation"])
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    made = views.views(images, generator=torch.Generator().manual_seed(5))
    params = views.sample(4, 20, 20, generator=torch.Generator().manual_seed(5))
    assert views.num_views == len(made) == len(params) == 3
    for view, p in zip(made, params):
        torch.testing.assert_close(view, views.recipe.apply(images, p))
    with pytest.raises(ValueError, match="not in the view recipe"):
        LeaveOneOutViews(ViewRecipe.simclr(16, MEAN, STD), ["rotation"])


def test_masks_follow_the_paper_for_each_space():
    positive, negative = looc_masks(2)
    # Z0: k0, k1, k2 all positive. Z1: k1 positive, k0 and k2 negative. Z2: k2 positive.
    assert positive.tolist() == [[True, True, True], [False, True, False], [False, False, True]]
    assert negative.tolist() == [[False, False, False], [True, False, True], [True, True, False]]


def test_leave_one_out_info_nce_against_a_hand_computed_value():
    t = 0.5
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]])  # k0, k1, k2: q.k = 0, 1, -1
    queue = torch.tensor([[0.6, 0.8]])  # q.queue = 0.6
    positive, negative = looc_masks(2)
    e = math.exp
    # Z1: positive k1, negatives k0, k2 and the queue.
    z1 = -math.log(e(1 / t) / (e(1 / t) + e(0 / t) + e(-1 / t) + e(0.6 / t)))
    got = leave_one_out_info_nce(q, keys, queue, positive[1], negative[1], t)
    assert abs(float(got) - z1) < 1e-5
    # Z0: each key its own term against the queue only, averaged.
    z0 = sum(-math.log(e(s / t) / (e(s / t) + e(0.6 / t))) for s in (0.0, 1.0, -1.0)) / 3
    assert abs(float(leave_one_out_info_nce(q, keys, queue, positive[0], negative[0], t)) - z0) < 1e-5
    # Z2: positive k2, negatives k0, k1.
    z2 = -math.log(e(-1 / t) / (e(-1 / t) + e(0 / t) + e(1 / t) + e(0.6 / t)))
    total = looc_loss([q, q, q], [keys, keys, keys], [queue, queue, queue], t)
    assert abs(float(total) - (z0 + z1 + z2) / 3) < 1e-5


def test_one_positive_and_no_image_negatives_is_moco_info_nce():
    torch.manual_seed(0)
    q, k, queue = torch.randn(6, 8), torch.randn(6, 8), torch.randn(20, 8)
    got = leave_one_out_info_nce(q, k[:, None], queue, torch.tensor([True]), torch.tensor([False]), 0.2)
    torch.testing.assert_close(got, info_nce_loss(q, k, queue, 0.2))


def test_keys_and_queue_get_no_gradient():
    q = torch.randn(4, 8, requires_grad=True)
    keys = torch.randn(4, 3, 8, requires_grad=True)
    queue = torch.randn(10, 8, requires_grad=True)
    looc_loss([q, q, q], [keys, keys, keys], [queue, queue, queue], 0.1).backward()
    assert q.grad is not None and keys.grad is None and queue.grad is None


def _looc(cifar_root, *overrides):
    from ssl_runner.methods import build_method

    cfg = compose_config(["method=looc", "experiment=smoke", f"data.root={cifar_root}", "data.subset=64",
                          "monitor.knn_every_n_epochs=0", *overrides])
    torch.manual_seed(0)
    return build_method(cfg, 10, 64)


def test_each_space_queue_receives_the_keys_of_its_own_head(cifar_root):
    # One BatchNorm group: the keys do not depend on the shuffle, so they can be recomputed here.
    module = _looc(cifar_root, "method.queue_size=64", "method.shuffle_bn_splits=1")
    module.train()
    torch.manual_seed(1)
    views = module.make_views(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    assert len(views) == 4  # q, k0, k_color, k_rotation
    with torch.no_grad():
        # key views k0..k2 x images x spaces x d
        keys = module.key_encoder(torch.cat(views[1:])).view(3, 8, 3, module.projector.output_dim)
    module.ssl_step(views, torch.arange(8))
    for space, queue in enumerate(module.queues):
        assert int(queue.ptr) == 8
        own = F.normalize(keys[space, :, space], dim=1)  # view k_space through head `space`
        torch.testing.assert_close(queue.keys[:8], own, atol=1e-5, rtol=1e-4)
        other_head = F.normalize(keys[space, :, (space + 1) % 3], dim=1)
        assert (queue.keys[:8] - other_head).abs().max() > 1e-2


def test_augmentations_are_validated_with_a_clear_error():
    with pytest.raises(UserError, match="method.augmentations"):
        compose_config(["method=looc", "method.augmentations=[colour]"])
    with pytest.raises(UserError, match="method.augmentations"):
        compose_config(["method=looc", "method.augmentations=[color,color]"])


@pytest.mark.integration
def test_smoke_run_reports_linear_looc_plus_plus_and_the_rotation_probe(cifar_root, tmp_path):
    """The issue's command: V's linear probe, LooC++ on the concatenated heads,
    and the rotation probe in summary.json."""
    env = {**os.environ, "SSL_RUNNER_DATA": str(cifar_root.parent), "CI": "true"}
    run_dir = tmp_path / "l1"
    proc = subprocess.run([sys.executable, "-m", "ssl_runner", "method=looc", "data=cifar10", "experiment=smoke",
                           "pipeline.plots=false", "eval.probe.train_images=500", "eval.probe.test_images=500",
                           f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = summary["stages"]
    assert list(stages) == ["pretrain", "knn", "linear", "linear_concat", "probe_rotation"]
    # The smoke preset's random-init baseline covers the probe too: the floor for the probe's figure.
    assert list(summary["baseline"]) == ["knn_random_init", "linear_random_init", "probe_rotation_random_init"]
    assert summary["baseline"]["probe_rotation_random_init"]["encoder_checkpoint"] == "random initialisation"
    for stage in ("linear", "linear_concat"):
        assert 15.0 < stages[stage]["top1"] <= 100.0
    # resnet_tiny's 128-d V; three heads' 128-d hidden layers.
    assert stages["linear_concat"]["feature_dim"] == 3 * 128
    probe = stages["probe_rotation"]
    assert probe["chance"] == 25.0 and (probe["train_images"], probe["test_images"]) == (500, 500)
    # Upright CIFAR images: even a briefly trained CNN tells rotations apart above chance
    # (25 %; its standard error on 2,000 test features is about 1 point).
    assert 30.0 < probe["top1"] <= 100.0
    encoder = torch.load(run_dir / "pretrain" / "encoder.pt", weights_only=True)
    assert encoder["method_config"]["augmentations"] == ["color", "rotation"]
    assert not any(k.startswith(("key_encoder.", "queues.")) for k in encoder["heads"])


# ---- the property probes and LooC++, in-process on real CIFAR-10 ------------------------------

class _QuadrantMeans(torch.nn.Module):
    """Features that see orientation and colour: each channel's mean over each
    image quadrant (12 numbers)."""

    feature_dim = 12

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        return torch.cat([x[..., :h, :w].mean((2, 3)), x[..., :h, w:].mean((2, 3)),
                          x[..., h:, :w].mean((2, 3)), x[..., h:, w:].mean((2, 3))], dim=1)


class _RotationInvariant(torch.nn.Module):
    """Features blind to rotation: per-channel mean and std over the whole image."""

    feature_dim = 6

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def _probe_context(tmp_path, cifar_root, encoder, monkeypatch):
    from ssl_runner.encoder import LoadedEncoder
    from ssl_runner.stages.context import RunContext
    from ssl_runner.run_dir import Manifest

    cfg = compose_config(["experiment=smoke", f"data.root={cifar_root}", "data.subset=400", "data.test_subset=400",
                          "eval.probe.train_images=400", "eval.probe.epochs=40", "trainer.progress=none"])
    ctx = RunContext(cfg, tmp_path, Manifest.open(tmp_path, {}))
    monkeypatch.setattr(ctx, "encoder", lambda: LoadedEncoder(encoder, "test", "in memory"))
    return ctx


@pytest.mark.integration
def test_rotation_probe_finds_orientation_only_where_the_features_keep_it(tmp_path, cifar_root, monkeypatch):
    from ssl_runner.stages import STAGES

    stage_probe_rotation = STAGES["probe_rotation"].run

    sensitive = stage_probe_rotation(_probe_context(tmp_path / "a", cifar_root, _QuadrantMeans(), monkeypatch))
    assert sensitive["chance"] == 25.0 and sensitive["test_images"] == 400
    assert sensitive["top1"] > 45.0  # quadrant colours tell sky from ground
    blind = stage_probe_rotation(_probe_context(tmp_path / "b", cifar_root, _RotationInvariant(), monkeypatch))
    assert abs(blind["top1"] - 25.0) < 3.0  # rotated copies have identical features: chance exactly


@pytest.mark.integration
def test_colour_probe_tells_grayscale_from_colour_features(tmp_path, cifar_root, monkeypatch):
    from ssl_runner.stages import STAGES

    stage_probe_color = STAGES["probe_color"].run

    result = stage_probe_color(_probe_context(tmp_path, cifar_root, _QuadrantMeans(), monkeypatch))
    # A grayscale image has equal channel means; "equal" is not a linear boundary, so not
    # 100 %, but far above the 50 % that a probe comparing identical inputs would give.
    assert result["chance"] == 50.0 and result["top1"] > 75.0


@pytest.mark.integration
def test_looc_plus_plus_refuses_an_encoder_without_heads_to_concatenate(tmp_path, cifar_root, monkeypatch):
    from ssl_runner.encoder import LoadedEncoder
    from ssl_runner.stages import STAGES

    stage_linear_concat = STAGES["linear_concat"].run

    ctx = _probe_context(tmp_path, cifar_root, _QuadrantMeans(), monkeypatch)
    monkeypatch.setattr(ctx, "encoder", lambda: LoadedEncoder(_QuadrantMeans(), "simclr", "enc.pt"))
    with pytest.raises(UserError, match="linear_concat.*method 'simclr'"):
        stage_linear_concat(ctx)
