"""The views of SimCLR's augmentation-composition study (Chen et al. 2020,
Sec. 3, Fig. 5): cutout, Sobel and Gaussian noise do exactly what their
parameters say, `views.first` / `views.second` build the composition in
order, and a misspelt transformation is refused before training."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from ssl_runner.errors import UserError
from ssl_runner.views.augmentations import (ColorJitter, GaussianBlur, HorizontalFlip, RandomGrayscale,
                                            Rotation90)
from ssl_runner.views.crop import RandomResizedCrop
from ssl_runner.views.recipe import ViewRecipe, view_recipe_from_config
from ssl_runner.views.study_augmentations import COMPOSITION_TRANSFORMS, Cutout, GaussianNoise, Sobel

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def generator(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def hole_by_hand(row: int, column: int, side: int, height: int, width: int) -> torch.Tensor:
    """H x W bool: the pixels of a side x side square whose centre pixel is
    (row, column), the centre at side // 2 from its top-left corner."""
    hole = torch.zeros(height, width, dtype=torch.bool)
    for y in range(height):
        for x in range(width):
            top, left = row - side // 2, column - side // 2
            hole[y, x] = top <= y < top + side and left <= x < left + side
    return hole


# --- cutout -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_fills_exactly_the_sampled_square(device):
    n, height, width = 64, 12, 16
    images = torch.rand(n, 3, height, width, generator=generator()).to(device) * 0.9 + 0.1  # no black pixel
    cutout = Cutout()
    params = cutout.sample(n, height, width, device, generator(1, device))
    out = cutout.apply(images, params)
    for i in range(n):
        row, column = params["centre"][i].tolist()
        hole = hole_by_hand(row, column, int(params["side"][i]), height, width).to(device).expand(3, -1, -1)
        assert (out[i][hole] == 0).all()
        assert torch.equal(out[i][~hole], images[i][~hole])
    assert torch.equal(cutout.apply(images, params), out)  # pure: the same params, the same views


def test_cutout_hole_is_clipped_at_the_border_and_its_side_is_up_to_half_the_image():
    images = torch.ones(2, 3, 8, 8)
    params = {"centre": torch.tensor([[0, 0], [7, 3]]), "side": torch.tensor([4, 3])}
    out = Cutout().apply(images, params)
    # Image 0: rows and columns -2..1, clipped to 0..1; image 1: rows 6..8 -> 6..7, columns 2..4.
    assert (out[0] == 0).sum() == 3 * 2 * 2 and (out[0, :, :2, :2] == 0).all()
    assert (out[1] == 0).sum() == 3 * 2 * 3 and (out[1, :, 6:, 2:5] == 0).all()
    sides = Cutout().sample(5000, 32, 24, generator=generator())["side"]
    assert sides.min() == 1 and sides.max() == 12  # up to half the shorter side (DeVries & Taylor's 16 of 32)
    centres = Cutout().sample(5000, 32, 24, generator=generator())["centre"]
    assert centres[:, 0].max() == 31 and centres[:, 1].max() == 23 and centres.min() == 0


# --- Sobel ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_sobel_of_a_constant_image_is_zero_and_of_a_step_is_one_at_the_edge(device):
    constant = torch.full((1, 3, 10, 10), 0.7, device=device)
    step = torch.zeros(1, 3, 10, 10, device=device)
    step[..., 5:] = 1.0  # a vertical edge between columns 4 and 5
    sobel = Sobel()
    params = sobel.sample(2, 10, 10, device, generator(0, device))
    assert params["apply"].all()
    out = sobel.apply(torch.cat([constant, step]), params)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    expected = torch.zeros(10, 10, device=device)
    expected[:, 4:6] = 1.0  # |d/dx| = 4 on both columns beside the edge, 0 elsewhere (replicated borders)
    for channel in range(3):
        assert torch.equal(out[1, channel], expected)


def test_sobel_uses_luma_and_scales_by_the_largest_magnitude():
    ramp = torch.arange(8.0).div(7).view(1, 1, 1, 8).expand(1, 3, 8, 8).clone()
    ramp[:, 1:] *= 0.0  # red only: luma 0.299 x, the same edges after scaling
    out = Sobel().apply(ramp, {"apply": torch.tensor([True])})
    expected = torch.ones(8, 8)
    expected[:, [0, -1]] = 0.5  # the replicated border sees half the slope
    torch.testing.assert_close(out[0, 0], expected)
    assert torch.equal(Sobel(p=0.0).apply(ramp, {"apply": torch.tensor([False])}), ramp)


# --- Gaussian noise ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_noise_apply_is_pure_and_has_the_sampled_std(device):
    n, side = 6, 64
    grey = torch.full((n, 3, side, side), 0.5, device=device)
    noise = GaussianNoise((0.02, 0.1))
    params = noise.sample(n, side, side, device, generator(0, device))
    assert params["noise"].shape == (n, 3, side, side)
    out = noise.apply(grey, params)
    assert torch.equal(noise.apply(grey, params), out) and (grey == 0.5).all()
    measured = (out - 0.5).flatten(1).std(dim=1)
    # 12,288 values per image: the estimate's relative error is ~0.6 %; clamping at 0.5 +- 5 std is negligible.
    torch.testing.assert_close(measured, params["std"], rtol=0.03, atol=0)
    other = noise.sample(n, side, side, device, generator(1, device))
    assert not torch.equal(noise.apply(grey, other), out)


def test_noise_is_clamped_and_sampled_at_the_crop_size():
    out = GaussianNoise().apply(torch.ones(1, 3, 4, 4), {"std": torch.tensor([1.0]), "noise": torch.ones(1, 3, 4, 4)})
    assert torch.equal(out, torch.ones(1, 3, 4, 4))
    recipe = ViewRecipe.composition(["crop", "noise"], 16, MEAN, STD)
    params = recipe.sample(3, 40, 40, generator=generator())
    assert params["noise"]["noise"].shape == (3, 3, 16, 16)
    assert recipe.apply(torch.zeros(3, 3, 40, 40, dtype=torch.uint8), params).shape == (3, 3, 16, 16)


# --- the composition from the config ----------------------------------------------------------------------


def study_recipe(first, second=None) -> ViewRecipe:
    overrides = [f"views.first={first}"] + ([f"views.second={second}"] if second else [])
    return view_recipe_from_config(compose_config(overrides), num_views=2)


def test_crop_then_color_is_simclr_crop_flip_jitter_grayscale():
    recipe = study_recipe("crop", "color")
    assert [type(a) for a in recipe.augmentations] == [RandomResizedCrop, HorizontalFlip, ColorJitter,
                                                       RandomGrayscale]
    crop, flip, jitter, gray = recipe.augmentations
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3)) and crop.size == 32
    assert flip.p == 0.5 and jitter.p == 0.8 and gray.p == 0.2
    assert jitter.factor_strengths["brightness"] == pytest.approx(0.8 * 0.5) and jitter.hue == pytest.approx(0.1)
    assert recipe.num_views == 2


def test_one_transformation_twice_is_that_one_alone_after_the_whole_image():
    recipe = study_recipe("sobel", "sobel")
    assert recipe.names == ["crop", "sobel"]
    assert recipe.augmentations[0].scale == (1.0, 1.0) and recipe.augmentations[0].ratio == (1.0, 1.0)
    assert study_recipe("rotate").names == ["crop", "rotation"]
    assert study_recipe("rotate").augmentations[1].p == 1.0 and study_recipe("blur").augmentations[1].p == 1.0


def test_cutout_then_noise_keeps_the_whole_image_and_applies_both_in_order():
    recipe = study_recipe("cutout", "noise")
    assert [type(a) for a in recipe.augmentations] == [RandomResizedCrop, Cutout, GaussianNoise]
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=generator())
    params = recipe.sample(20, 32, 32, generator=generator(1))
    assert torch.equal(params["crop"]["box"], torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 20))
    unit = images.float() / 255
    assert torch.equal(recipe.augmentations[0].apply(unit, params["crop"]), unit)  # the whole image, unchanged
    by_hand = GaussianNoise().apply(Cutout().apply(unit, params["cutout"]), params["noise"])
    mean, std = torch.tensor(recipe.mean).view(1, 3, 1, 1), torch.tensor(recipe.std).view(1, 3, 1, 1)
    torch.testing.assert_close(recipe.apply(images, params), (by_hand - mean) / std)
    assert (by_hand == 0).any() and not torch.equal(by_hand, unit)  # a hole and noise: both acted


def test_crop_second_crops_the_transformed_image():
    recipe = study_recipe("blur", "crop")
    assert recipe.names == ["crop", "blur", "second_crop", "flip"]
    assert [type(a) for a in recipe.augmentations] == [RandomResizedCrop, GaussianBlur, RandomResizedCrop,
                                                       HorizontalFlip]
    assert recipe.augmentations[0].scale == (1.0, 1.0) and recipe.augmentations[2].scale == (0.08, 1.0)


def test_without_first_the_simclr_family_is_unchanged():
    recipe = view_recipe_from_config(compose_config(), num_views=2)
    assert recipe.names == ["crop", "flip", "color", "grayscale"]
    assert [type(a) for a in ViewRecipe.simclr(32, MEAN, STD, rotation_p=0.5).augmentations][2] is Rotation90


def test_every_pair_makes_finite_views_of_the_right_size():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator())
    g = generator()
    for first in COMPOSITION_TRANSFORMS:
        for second in COMPOSITION_TRANSFORMS:
            views = ViewRecipe.composition([first, second], 32, MEAN, STD, num_views=2).views(images, g)
            assert len(views) == 2 and all(v.shape == (4, 3, 32, 32) and torch.isfinite(v).all() for v in views)


def test_a_method_that_adapts_the_views_refuses_the_study():
    cfg = compose_config(["method=rotnet", "views.first=crop"])
    with pytest.raises(UserError, match="views.first=crop.*rotnet"):
        view_recipe_from_config(cfg, num_views=1, jitter_p=0.0)


def test_a_misspelt_transformation_fails_validation_naming_the_choices():
    with pytest.raises(UserError) as err:
        compose_config(["views.first=cutuot", "views.second=crop"])
    message = str(err.value)
    assert "views.first" in message and "cutuot" in message and "Did you mean 'cutout'" in message
    assert all(name in message for name in COMPOSITION_TRANSFORMS)
    with pytest.raises(UserError, match="views.second.*sobell"):
        compose_config(["views.first=crop", "views.second=sobell"])
    with pytest.raises(UserError, match="views.first is null"):
        compose_config(["views.second=color"])
    cfg = compose_config(["views.first=crop", "views.second=color"])
    assert (cfg.views.first, cfg.views.second) == ("crop", "color")
    assert compose_config().views.first is None and compose_config().views.second is None
