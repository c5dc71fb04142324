"""Context prediction's patch pairs: each label names the neighbour's place,
the gap and the jitter keep patches apart and inside the image, labels are
uniform and reproducible, the chromatic guards do what Sec. 4.2 says, and a
layout that does not fit is refused with the fix."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_runner.views.chromatic_guards import project_out_green_magenta
from ssl_runner.views.relative_location import NEIGHBOUR_OFFSETS, SCALES, RelativeLocationPairs

PATCH, GAP, JITTER = 12, 6, 2


def _coordinate_images(n: int, size: int) -> torch.Tensor:
    """Channel 0 = row / size, channel 1 = column / size, channel 2 = 0.5."""
    ramp = torch.arange(size, dtype=torch.float32) / size
    image = torch.stack([ramp.view(-1, 1).expand(size, size), ramp.view(1, -1).expand(size, size),
                         torch.full((size, size), 0.5)])
    return image.expand(n, 3, size, size).contiguous()


def _pairs(guard: str = "none", image_size: int | None = 64, **kwargs) -> RelativeLocationPairs:
    return RelativeLocationPairs(PATCH, GAP, JITTER, image_size=image_size, chromatic_guard=guard, **kwargs)


def test_label_layout_is_raster_order_of_the_eight_neighbours():
    assert NEIGHBOUR_OFFSETS == ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def test_each_label_moves_the_neighbour_in_its_direction():
    size, n = 64, 4000
    images = _coordinate_images(n, size)
    centre, neighbour, labels = _pairs()(images, generator=torch.Generator().manual_seed(0))
    assert centre.shape == neighbour.shape == (n, 3, PATCH, PATCH) and centre.dtype == torch.float32
    assert torch.equal(centre[:, 2], torch.full_like(centre[:, 2], 0.5))
    # Mean row and column of each patch, in pixels; the neighbour's relative to the centre's.
    delta_row = (neighbour[:, 0] - centre[:, 0]).mean((1, 2)) * size
    delta_col = (neighbour[:, 1] - centre[:, 1]).mean((1, 2)) * size
    near, far = (GAP - 2 * JITTER + PATCH, GAP + 2 * JITTER + PATCH)  # one cell: the stride +- both jitters
    for label, (dr, dc) in enumerate(NEIGHBOUR_OFFSETS):
        mine = labels == label
        assert mine.sum() > 300, label
        for delta, offset in ((delta_row[mine], dr), (delta_col[mine], dc)):
            if offset == 0:
                assert delta.abs().max() <= 2 * JITTER + 1e-3, (label, offset)
            else:
                moved = delta * offset  # positive when it moved the way the label says
                assert moved.min() >= near - 1e-3 and moved.max() <= far + 1e-3, (label, offset)


def test_patches_are_the_image_pixels_at_the_sampled_corners_after_the_resize():
    # 32-px images enlarged to 64 (plain bilinear) and 128-px ones shrunk to 64 (antialiased).
    for source, antialias in ((32, False), (128, True)):
        images = torch.randint(0, 256, (6, 3, source, source), dtype=torch.uint8)
        pairs = _pairs()
        params = pairs.sample(6, source, source, generator=torch.Generator().manual_seed(1))
        centre, neighbour = pairs.apply(images, params)
        resized = F.interpolate(images.float() / 255, size=(64, 64), mode="bilinear", align_corners=False,
                                antialias=antialias)
        for i in range(6):
            (r, c), (s, d) = params["centre"][i].tolist(), params["neighbour"][i].tolist()
            torch.testing.assert_close(centre[i], resized[i, :, r:r + PATCH, c:c + PATCH])
            torch.testing.assert_close(neighbour[i], resized[i, :, s:s + PATCH, d:d + PATCH])
    # The short side goes to image_size, the aspect ratio is kept.
    assert _pairs().resized_shape(32, 48) == (64, 96)
    assert _pairs().resized_shape(96, 64) == (96, 64)
    assert _pairs(image_size=None).resized_shape(70, 80) == (70, 80)


def test_neighbours_keep_the_gap_and_stay_inside_the_image():
    n = 20000
    pairs = _pairs(image_size=None)
    params = pairs.sample(n, 70, 90, generator=torch.Generator().manual_seed(2))  # non-square: no resize
    centre, neighbour = params["centre"], params["neighbour"]
    for corners in (centre, neighbour):
        assert corners[:, 0].min() >= 0 and (corners[:, 0] + PATCH).max() <= 70
        assert corners[:, 1].min() >= 0 and (corners[:, 1] + PATCH).max() <= 90
    delta = neighbour - centre
    overlap = (PATCH - delta.abs()).clamp_min(0).prod(dim=1)
    assert overlap.max() == 0
    offsets = torch.tensor(NEIGHBOUR_OFFSETS)[params["label"]]
    apart = offsets != 0
    separation = (delta.abs() - PATCH)[apart]  # pixels between the patches along each axis they are apart on
    # Between gap - 2 jitter and gap + 2 jitter, both ends reached: each patch is jittered by up to `jitter`.
    assert separation.min() == GAP - 2 * JITTER and separation.max() == GAP + 2 * JITTER
    # Along an axis they share, the two jitters alone.
    assert delta[~apart].abs().max() == 2 * JITTER
    # The layout is placed anywhere it fits: the centre patch does not sit still.
    assert centre[:, 0].unique().numel() > 5 and centre[:, 1].unique().numel() > 20


def test_labels_are_uniform_and_reproducible():
    pairs = _pairs("drop_channels")
    n = 40000
    params = pairs.sample(n, 64, 64, generator=torch.Generator().manual_seed(3))
    share = torch.bincount(params["label"], minlength=8).float() / n
    assert torch.allclose(share, torch.full((8,), 1 / 8), atol=0.01)
    again = pairs.sample(n, 64, 64, generator=torch.Generator().manual_seed(3))
    assert params.keys() == again.keys()
    assert all(torch.equal(params[k], again[k]) for k in params)
    other = pairs.sample(n, 64, 64, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(params["label"], other["label"])
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    first = pairs(images, generator=torch.Generator().manual_seed(5))
    second = pairs(images, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_project_removes_the_green_magenta_component_and_keeps_the_rest():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 64, 64)
    projector = _pairs("project")
    params = projector.sample(64, 64, 64, generator=torch.Generator().manual_seed(6))
    plain = _pairs("none").apply(images, params)
    axis = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1) / math.sqrt(6)  # the paper's, not the module's
    for original, projected in zip(plain, projector.apply(images, params)):
        # The axis is orthogonal to gray, so no centring is needed: the same with per-patch mean subtraction.
        assert (projected * axis).sum(1).abs().max() < 1e-5
        centred = projected - projected.mean(dim=(1, 2, 3), keepdim=True)
        assert (centred * axis).sum(1).abs().max() < 1e-5
        # Only the component along the axis goes: the rest of each colour is the original's.
        removed = original - projected
        torch.testing.assert_close(removed, (original * axis).sum(1, keepdim=True) * axis)
        assert (original * axis).sum(1).abs().mean() > 0.1  # random colours had a component to remove
    # Pure green and pure magenta become grays; grays stay.
    colours = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.3, 0.3, 0.3]]).view(3, 3, 1, 1)
    torch.testing.assert_close(project_out_green_magenta(colours).flatten(1),
                               torch.tensor([[1 / 3] * 3, [2 / 3] * 3, [0.3] * 3]))


def test_drop_channels_keeps_one_channel_and_fills_the_others_with_noise():
    torch.manual_seed(0)
    n, std = 600, 0.02
    images = torch.rand(n, 3, 64, 64)
    dropper = _pairs("drop_channels", noise_std=std)
    params = dropper.sample(n, 64, 64, generator=torch.Generator().manual_seed(7))
    plain = _pairs("none").apply(images, params)
    for patch, original, dropped in zip(("centre", "neighbour"), plain, dropper.apply(images, params)):
        keep = params[f"{patch}_keep"]
        same = (dropped == original).all(dim=3).all(dim=2)  # N x 3: channel left untouched
        assert torch.equal(same.sum(1), torch.ones(n, dtype=torch.long))
        assert torch.equal(same.float().argmax(1), keep)
        assert (torch.bincount(keep, minlength=3).float() / n - 1 / 3).abs().max() < 0.06
        noise = dropped[~same].view(n, 2, PATCH * PATCH)  # the two dropped channels of each patch
        assert abs(noise.mean().item() - 0.5) < 1e-3
        assert abs(noise.std().item() / std - 1) < 0.02
        per_patch = noise.std(dim=2) / std  # 144 samples each
        assert per_patch.min() > 0.6 and per_patch.max() < 1.4
    # Centre and neighbour get their own channel and noise.
    assert not torch.equal(params["centre_keep"], params["neighbour_keep"])


def test_a_layout_that_does_not_fit_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"needs .* = 82 px .*image_size to at least 82"):
        RelativeLocationPairs(patch_size=20, gap=10, jitter=1, image_size=64)
    # Without a resize, the images themselves are checked when sampling.
    pairs = RelativeLocationPairs(patch_size=20, gap=10, jitter=1, image_size=None)
    with pytest.raises(ValueError, match=r"64 x 64 images .*at least 82"):
        pairs(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="2 \\* jitter"):
        RelativeLocationPairs(patch_size=16, gap=4, jitter=3, image_size=96)
    with pytest.raises(ValueError, match="chromatic_guard"):
        RelativeLocationPairs(16, 8, 2, 96, chromatic_guard="grayscale")
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        _pairs().apply(torch.zeros(2, 1, 64, 64), _pairs().sample(2, 64, 64))


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_each_scale_fits_and_makes_pairs(scale):
    pairs = RelativeLocationPairs.from_scale(scale)
    geometry = SCALES[scale]
    assert pairs.layout_size <= geometry["image_size"]
    assert pairs.gap >= 2 * pairs.jitter
    source = 32 if scale.startswith("cifar") else 96
    images = torch.randint(0, 256, (4, 3, source, source), dtype=torch.uint8)
    centre, neighbour, labels = pairs(images, generator=torch.Generator().manual_seed(8))
    p = geometry["patch_size"]
    assert centre.shape == neighbour.shape == (4, 3, p, p) and labels.shape == (4,)
    assert math.isfinite(float(centre.sum())) and math.isfinite(float(neighbour.sum()))
    with pytest.raises(ValueError, match="unknown relative-location scale"):
        RelativeLocationPairs.from_scale("mnist")


def test_the_cifar_geometries_keep_the_papers_proportions():
    """Both CIFAR presets: 7 CIFAR pixels a patch, the paper's gap of half a
    patch, at 3x ("cifar") and 2x ("cifar64", a run at data.image_size=64)."""
    for scale, factor in (("cifar", 3), ("cifar64", 2)):
        g = SCALES[scale]
        assert g["image_size"] == 32 * factor and g["patch_size"] // factor == 7 and 2 * g["gap"] == g["patch_size"]
        assert RelativeLocationPairs.from_scale(scale).layout_size <= g["image_size"]


# ---- the method ------------------------------------------------------------------------

def test_relative_loc_method_sends_both_patches_through_one_tower(cifar_root):
    from conftest import compose_config

    from ssl_runner.methods import build_method

    cfg = compose_config(["method=relative_loc", "experiment=smoke", f"data.root={cifar_root}",
                          "monitor.knn_every_n_epochs=0"])
    torch.manual_seed(0)
    module = build_method(cfg, 10, 64)
    centre, neighbour, labels = module.make_views(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8))
    assert centre.shape == neighbour.shape == (5, 3, 22, 22) and labels.shape == (5,)
    seen = []
    module.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    out = module.ssl_step([centre, neighbour, labels], torch.arange(5))
    torch.testing.assert_close(seen[0], torch.cat([centre, neighbour]))
    assert out.features.shape == (5, module.feature_dim) and 0 < float(out.loss) < 3 * math.log(8)


def test_relative_loc_options_are_validated():
    from conftest import compose_config

    from ssl_runner.errors import UserError

    with pytest.raises(UserError, match="chromatic_guard"):
        compose_config(["method=relative_loc", "method.chromatic_guard=greyscale"])


@pytest.mark.integration
def test_relative_loc_smoke_run_completes(cifar_root, tmp_path):
    """The issue's command: exit 0 and a complete summary, the location accuracy logged."""
    from conftest import run_method_cli

    _, rows = run_method_cli(cifar_root, tmp_path / "p-relative_loc", "method=relative_loc", "eval.random_baseline=false")
    assert len([r for r in rows if r["train/location_top1"]]) == 2
