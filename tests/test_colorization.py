"""Colorization (Zhang et al., ECCV 2016): sRGB <-> Lab, the in-gamut ab bins,
soft encoding, class rebalancing, the rebalanced cross-entropy, the annealed
mean, the method's views and statistics, and the smoke run with its grid."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config, run_method_cli

from ssl_runner.data.datasets import ImageSet
from ssl_runner.losses.colorization import rebalanced_cross_entropy, rebalancing_weights, smooth_distribution
from ssl_runner.views.ab_bins import ab_gamut_bins, annealed_mean, empirical_bin_distribution, nearest_bin, soft_encode
from ssl_runner.views.lab import gray_from_lightness, lab_to_rgb, rgb_to_lab


def _pixels(values):
    """A list of 3-vectors -> N x 3 x 1 x 1."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 3, 1, 1)


def _bin(centres, a, b):
    return int(((centres - torch.tensor([a, b])).abs().sum(1) == 0).nonzero())


# ---- colour space ---------------------------------------------------------------------------------

def test_rgb_lab_round_trip_and_known_values():
    torch.manual_seed(0)
    rgb = torch.rand(4, 3, 16, 16)
    lab = rgb_to_lab(rgb)
    assert (lab_to_rgb(lab, clamp=False) - rgb).abs().max() < 1e-4
    assert (lab_to_rgb(lab) - rgb).abs().max() < 1e-4
    assert 0.0 <= float(lab[:, 0].min()) and float(lab[:, 0].max()) <= 100.0
    known = rgb_to_lab(_pixels([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])).view(-1, 3)
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.2408, 80.0925, 67.2032],
                             [87.7347, -86.1827, 83.1793], [32.2970, 79.1875, -107.8602]])
    assert torch.allclose(known, expected, atol=2e-3)
    # Grays have a = b = 0, and a gray from L is lab_to_rgb of (L, 0, 0), with that L back.
    assert rgb_to_lab(_pixels([[0.3, 0.3, 0.3], [0.8, 0.8, 0.8]]))[:, 1:].abs().max() < 1e-4
    lightness = torch.tensor([0.0, 5.0, 37.5, 50.0, 99.0]).view(-1, 1, 1, 1)
    gray = gray_from_lightness(lightness)
    zeros = torch.zeros_like(lightness)
    assert torch.allclose(gray, lab_to_rgb(torch.cat([lightness, zeros, zeros], 1)), atol=1e-6)
    assert torch.allclose(rgb_to_lab(gray)[:, 0:1], lightness, atol=1e-3)


def test_lab_to_rgb_clamps_out_of_gamut_colours_only_when_asked():
    out_of_gamut = torch.tensor([20.0, 90.0, -100.0]).view(1, 3, 1, 1)  # a dark, very saturated purple
    raw = lab_to_rgb(out_of_gamut, clamp=False)
    assert raw.min() < 0.0 or raw.max() > 1.0
    assert torch.equal(lab_to_rgb(out_of_gamut), raw.clamp(0.0, 1.0))


# ---- the ab bins ----------------------------------------------------------------------------------

def test_gamut_bins_are_the_grid_cells_the_srgb_gamut_reaches():
    centres = ab_gamut_bins(10)
    # 262, not the paper's 313: see ab_gamut_bins for the derivations tried.
    assert centres.shape == (262, 2) and centres.dtype == torch.float32
    assert torch.equal(centres, torch.round(centres / 10) * 10)  # on the grid
    assert len(torch.unique(centres, dim=0)) == len(centres)
    assert torch.equal(centres, ab_gamut_bins(10))  # deterministic
    ab_gamut_bins(10).fill_(0)  # the cache hands out copies
    assert torch.equal(centres, ab_gamut_bins(10))
    # Every sRGB colour, the cube's corners and faces included, has a bin
    # within half a cell in each coordinate, hence within grid / sqrt(2).
    torch.manual_seed(1)
    sample = torch.rand(20000, 3)
    sample[:5000, 0] = (sample[:5000, 0] > 0.5).float()  # on a face of the cube, where the gamut's edge is
    corners = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.float32)
    ab = rgb_to_lab(torch.cat([sample, corners]).view(-1, 3, 1, 1))[:, 1:].view(-1, 2)
    distances = torch.cdist(ab, centres).min(dim=1).values
    assert float(distances.max()) <= 10 / math.sqrt(2)
    assert float((ab[:, None, :] - centres[None]).abs().amax(-1).min(1).values.max()) <= 5.0 + 1e-4
    # Bins are only where colours are: the cell of an ab far outside the gamut is not one.
    assert not ((centres - torch.tensor([-80.0, -80.0])).abs().sum(1) == 0).any()


# ---- soft encoding --------------------------------------------------------------------------------

def test_soft_encoding_is_five_gaussian_weights_on_the_nearest_bins():
    centres = ab_gamut_bins()
    torch.manual_seed(2)
    ab = rgb_to_lab(torch.rand(3, 3, 4, 5))[:, 1:]
    z = soft_encode(ab, centres, neighbours=5, sigma=5.0)
    assert z.shape == (3, len(centres), 4, 5)
    assert torch.allclose(z.sum(1), torch.ones(3, 4, 5))
    assert torch.equal((z > 0).sum(1), torch.full((3, 4, 5), 5))
    assert torch.equal(z.argmax(1), nearest_bin(ab, centres))
    # On a bin centre, (0, 0): itself (distance 0) and its four neighbours at
    # distance 10 (the diagonal ones are 14.1 away), weighted 1 and e^-2.
    on_centre = soft_encode(torch.zeros(1, 2, 1, 1), centres).view(-1)
    total = 1 + 4 * math.exp(-100 / (2 * 25))
    assert on_centre[_bin(centres, 0, 0)] == pytest.approx(1 / total, abs=1e-6)
    for a, b in ((10, 0), (-10, 0), (0, 10), (0, -10)):
        assert on_centre[_bin(centres, a, b)] == pytest.approx(math.exp(-2) / total, abs=1e-6)
    assert (on_centre > 0).sum() == 5


def test_empirical_distribution_counts_nearest_bins():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    ab = torch.tensor([[1.0, 1.0], [9.0, 0.0], [7.0, 1.0], [0.0, 20.0]]).T.reshape(1, 2, 2, 2)
    p = empirical_bin_distribution([ab[:, :, :1], ab[:, :, 1:]], centres)
    assert torch.allclose(p, torch.tensor([0.25, 0.5, 0.25]))
    assert torch.allclose(empirical_bin_distribution(ab, centres), p)


# ---- class rebalancing ----------------------------------------------------------------------------

def test_smoothing_keeps_the_mass_and_spreads_it_by_a_gaussian():
    two = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    smoothed = smooth_distribution(torch.tensor([1.0, 0.0]), two, sigma=5.0)
    assert torch.allclose(smoothed, torch.tensor([1.0, math.exp(-2)]) / (1 + math.exp(-2)))
    centres = ab_gamut_bins()
    p = torch.rand(len(centres))
    assert float(smooth_distribution(p / p.sum(), centres).sum()) == pytest.approx(1.0, abs=1e-5)


def test_rebalancing_weights_hand_computed_mean_one_and_larger_for_rare_bins():
    # Bins too far apart for the smoothing to mix them: p~ = p = (3/4, 1/4);
    # (1 - 1/2) p + 1/2 / 2 = (5/8, 3/8); w ~ (8/5, 8/3), E_p[w] = 28/15: w = (6/7, 10/7).
    far = torch.tensor([[0.0, 0.0], [1000.0, 0.0]])
    w = rebalancing_weights(torch.tensor([0.75, 0.25]), far, lam=0.5, sigma=5.0)
    assert torch.allclose(w, torch.tensor([6 / 7, 10 / 7]))

    centres = ab_gamut_bins()
    torch.manual_seed(3)
    p = empirical_bin_distribution(rgb_to_lab(torch.rand(8, 3, 16, 16) ** 3)[:, 1:], centres)
    smoothed = smooth_distribution(p, centres)
    w = rebalancing_weights(p, centres, lam=0.5)
    assert float((smoothed * w).sum()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(rebalancing_weights(p, centres, lam=1.0), torch.ones(len(centres)))
    # w is decreasing in p~: a rarer bin never weighs less.
    order = smoothed.argsort()
    assert (w[order][1:] <= w[order][:-1] + 1e-6).all()
    assert float(w[smoothed.argmax()]) < 1.0 < float(w[smoothed.argmin()])


# ---- loss and point estimate ----------------------------------------------------------------------

def test_rebalanced_cross_entropy_hand_computed():
    # Q = 3, two pixels; softmax(log p) = p.
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    logits = probs.log().T.reshape(1, 3, 1, 2)
    targets = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]]).T.reshape(1, 3, 1, 2)
    weights = torch.tensor([2.0, 0.5, 1.0])  # pixel 1's most likely bin is 0, pixel 2's is 2
    first = -2.0 * (0.6 * math.log(0.5) + 0.4 * math.log(0.25))
    second = -1.0 * (0.25 * math.log(0.3) + 0.75 * math.log(0.5))
    loss = rebalanced_cross_entropy(logits, targets, weights)
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)
    unweighted = rebalanced_cross_entropy(logits, targets, torch.ones(3))
    plain = -(targets * probs.log().T.reshape(1, 3, 1, 2)).sum(1).mean()  # soft-target cross-entropy
    assert float(unweighted) == pytest.approx(float(plain), rel=1e-6)


def test_annealed_mean_between_the_mean_and_the_mode():
    centres = torch.tensor([[0.0, 0.0], [10.0, 20.0]])
    probs = torch.tensor([0.75, 0.25]).view(1, 2, 1, 1)
    # T = 1: the mean; T = 1/2: weights ~ p^2 = (9/16, 1/16) -> (0.9, 0.1); T -> 0: the mode.
    assert torch.allclose(annealed_mean(probs, centres, 1.0).view(2), torch.tensor([2.5, 5.0]))
    assert torch.allclose(annealed_mean(probs, centres, 0.5).view(2), torch.tensor([1.0, 2.0]), atol=1e-5)
    assert torch.allclose(annealed_mean(probs, centres, 0.01).view(2), torch.zeros(2), atol=1e-4)


# ---- the method -----------------------------------------------------------------------------------

def _method(cifar_root, *overrides):
    from ssl_runner.methods import build_method

    cfg = compose_config(["method=colorization", "experiment=smoke", f"data.root={cifar_root}",
                          "monitor.knn_every_n_epochs=0", "trainer.channels_last=false", *overrides])
    torch.manual_seed(0)
    return build_method(cfg, 10, 64), cfg


def test_views_are_the_lightness_in_gray_and_the_downsampled_ab(cifar_root):
    module, cfg = _method(cifar_root)
    assert [a.name for a in module.view_maker.recipe.augmentations] == ["crop", "flip"]
    # One colour per image: every crop shows that colour, so the targets are exact.
    colours = torch.tensor([[200, 30, 40], [20, 160, 90], [128, 128, 128]], dtype=torch.uint8)
    images = colours.view(3, 3, 1, 1).expand(3, 3, 40, 40).contiguous()
    inputs, ab = module.make_views(images)
    assert inputs.shape == (3, 3, 32, 32) and ab.shape == (3, 2, 8, 8)
    lab = rgb_to_lab(colours.float().view(3, 3, 1, 1) / 255)
    assert torch.allclose(ab, lab[:, 1:].expand(3, 2, 8, 8), atol=1e-3)
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    gray = inputs * std + mean
    assert torch.allclose(gray, gray_from_lightness(lab[:, :1]).expand(3, 3, 32, 32), atol=1e-4)
    out = module.ssl_step([inputs, ab], torch.arange(3))
    assert out.features.shape == (3, module.feature_dim) and out.loss.requires_grad
    assert module.colour_decoder(module.backbone.feature_map(inputs)).shape == (3, 262, 8, 8)


def test_statistics_from_evenly_spaced_images_become_the_class_weight_buffer(cifar_root):
    module, _ = _method(cifar_root, "method.statistics_images=2")
    assert torch.equal(module.class_weights, torch.ones(262))
    # Four red images, then four gray: evenly spaced, the two chosen are image 0 and image 4.
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(4, 3, 32, 32)
    gray = torch.full((4, 3, 32, 32), 90, dtype=torch.uint8)
    images = ImageSet(labels=torch.zeros(8, dtype=torch.long), classes=["x"], images=torch.cat([red, gray]))
    module.fit_statistics(images)
    centres = ab_gamut_bins()
    p = torch.zeros(len(centres))
    p[_bin(centres, 80, 70)] = 0.5  # red's ab (80.1, 67.2)
    p[_bin(centres, 0, 0)] = 0.5
    assert torch.allclose(module.class_weights, rebalancing_weights(p, centres, 0.5, 5.0), rtol=1e-5)
    assert "class_weights" in module.state_dict() and "centres" not in module.state_dict()


@pytest.mark.integration
def test_smoke_run_saves_the_colour_grid_and_the_loss_goes_down(cifar_root, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    summary, rows = run_method_cli(cifar_root, run, "method=colorization", "eval.random_baseline=false")
    grid = run / "pretrain" / "colorization_grid.png"
    assert grid.is_file() and summary["stages"]["pretrain"]["artifacts"] == ["pretrain/colorization_grid.png"]
    # make_grid: 3 rows of 8 images of 32 px, 2 px of padding around each.
    assert Image.open(grid).size == (8 * (32 + 2) + 2, 3 * (32 + 2) + 2)
    epoch_losses = [float(r["train/loss_epoch"]) for r in rows if r["train/loss_epoch"]]
    step_losses = [float(r["train/loss_step"]) for r in rows if r["train/loss_step"]]
    assert len(epoch_losses) == 2 and epoch_losses[1] < epoch_losses[0]
    assert step_losses[-1] < step_losses[0]
    accuracy = [float(r["train/pixel_top1"]) for r in rows if r["train/pixel_top1"]]
    assert len(accuracy) == 2 and all(0.0 <= a <= 100.0 for a in accuracy)
