"""Views: sampled parameters follow SimCLR's / torchvision's distributions,
and `apply` honours exactly the parameters it is given (a pure function of
images and params, so LooC can copy one augmentation's params between views)."""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import RandomResizedCrop as TorchvisionRandomResizedCrop

from ssl_runner.views import ViewMaker
from ssl_runner.views.augmentations import ColorJitter, GaussianBlur, HorizontalFlip, RandomGrayscale, Solarize
from ssl_runner.views.color import adjust_hue, hsv_to_rgb, rgb_to_hsv
from ssl_runner.views.crop import RandomResizedCrop
from ssl_runner.views.pixels import eval_view
from ssl_runner.views.recipe import ViewRecipe

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
MANY = 20_000


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_frequency(flags: torch.Tensor, p: float) -> None:
    """The share of True flags is p within 5 binomial standard deviations."""
    assert flags.dtype == torch.bool
    n = flags.numel()
    assert abs(flags.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n)


def box_sizes(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]


def two_by_two_image() -> torch.Tensor:
    """1 x 3 x 2 x 2, pixels red, green, mid gray and a bluish dark gray;
    lumas 0.299, 0.587, 0.5, 0.2684 (mean 0.4136)."""
    red = [[1.0, 0.0], [0.5, 0.2]]
    green = [[0.0, 1.0], [0.5, 0.2]]
    blue = [[0.0, 0.0], [0.5, 0.8]]
    return torch.tensor([red, green, blue]).unsqueeze(0)


def jitter_params(n: int, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                  hue: float = 0.0, order: tuple[int, ...] = (0, 1, 2, 3), apply: bool = True,
                  ) -> dict[str, torch.Tensor]:
    """Hand-set ColorJitter params, the same for n images."""
    return {
        "apply": torch.full((n,), apply),
        "brightness": torch.full((n,), float(brightness)),
        "contrast": torch.full((n,), float(contrast)),
        "saturation": torch.full((n,), float(saturation)),
        "hue": torch.full((n,), float(hue)),
        "order": torch.tensor([order] * n),
    }


def full_recipe(size: int = 16) -> ViewRecipe:
    """Every augmentation present, so every one is exercised."""
    return ViewRecipe.simclr(size, MEAN, STD, jitter_strength=1.0, blur_p=0.5, solarize_p=0.3)


# --- sampling ---------------------------------------------------------------------------------------------


def test_crop_params_stay_in_range():
    height, width, scale, ratio = 48, 64, (0.08, 1.0), (3 / 4, 4 / 3)
    box = RandomResizedCrop(16, scale, ratio).sample(MANY, height, width, generator=generator())["box"]
    assert box.shape == (MANY, 4) and box.dtype == torch.float32
    assert torch.equal(box, box.round())
    w, h = box_sizes(box)
    assert (box[:, :2] >= 0).all() and (box[:, 2] <= width).all() and (box[:, 3] <= height).all()
    assert (w > 0).all() and (h > 0).all()
    # w and h are rounded from sqrt(area r) and sqrt(area / r): within half a pixel of them.
    assert ((w + 0.5) * (h + 0.5) >= scale[0] * height * width).all()
    assert ((w - 0.5) * (h - 0.5) <= scale[1] * height * width).all()
    assert ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
    assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all()
    # Positions are uniform over the free range, not always at the corner.
    free = height - h > 0
    assert 0.47 < (box[free, 1] / (height - h[free])).mean() < 0.53


def test_crop_sampling_follows_torchvision_get_params():
    height = width = 32
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours = RandomResizedCrop(32, scale, ratio).sample(MANY, height, width, generator=generator())["box"]
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = torch.tensor([TorchvisionRandomResizedCrop.get_params(image, list(scale), list(ratio))
                           for _ in range(3000)], dtype=torch.float32)  # rows (top, left, h, w)
    ours_w, ours_h = box_sizes(ours)
    for our_values, their_values in [(ours_w, theirs[:, 3]), (ours_h, theirs[:, 2]),
                                     (ours[:, 0], theirs[:, 1]), (ours[:, 1], theirs[:, 0])]:
        standard_error = math.sqrt(our_values.var() / len(our_values) + their_values.var() / len(their_values))
        assert abs(our_values.mean() - their_values.mean()) < 5 * standard_error


@pytest.mark.parametrize("height, width", [(10, 40), (40, 10), (20, 20)])
def test_crop_fallback_is_torchvision_central_crop(height, width):
    # Area fractions near 1 with ratios up to 4/3 never fit these images: every attempt fails.
    scale, ratio = (0.95, 1.0), (1.2, 4 / 3)
    box = RandomResizedCrop(8, scale, ratio).sample(50, height, width, generator=generator())["box"]
    top, left, h, w = TorchvisionRandomResizedCrop.get_params(torch.zeros(3, height, width), scale, ratio)
    assert torch.equal(box, torch.tensor([[left, top, left + w, top + h]] * 50, dtype=torch.float32))


def test_binary_params_have_their_probabilities():
    g = generator()
    assert_frequency(HorizontalFlip(0.5).sample(MANY, 8, 8, generator=g)["flip"], 0.5)
    assert_frequency(ColorJitter(p=0.8).sample(MANY, 8, 8, generator=g)["apply"], 0.8)
    assert_frequency(RandomGrayscale(0.2).sample(MANY, 8, 8, generator=g)["gray"], 0.2)
    blur = GaussianBlur(0.5).sample(MANY, 8, 8, generator=g)
    assert_frequency(blur["apply"], 0.5)
    assert blur["sigma"].min() >= 0.1 and blur["sigma"].max() <= 2.0
    assert_frequency(Solarize(0.3).sample(MANY, 8, 8, generator=g)["apply"], 0.3)
    assert not HorizontalFlip(0.0).sample(100, 8, 8, generator=g)["flip"].any()
    assert ColorJitter(p=1.0).sample(100, 8, 8, generator=g)["apply"].all()


def test_jitter_factors_stay_in_range_and_order_is_a_permutation():
    params = ColorJitter(p=0.8, brightness=0.4, contrast=1.5, saturation=0.8, hue=0.1).sample(
        MANY, 8, 8, generator=generator())
    for name, (low, high) in {"brightness": (0.6, 1.4), "contrast": (0.0, 2.5), "saturation": (0.2, 1.8),
                              "hue": (-0.1, 0.1)}.items():
        values = params[name]
        assert values.shape == (MANY,)
        assert values.min() >= low and values.max() <= high
        # Uniform over the range: the extremes are approached from both sides.
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low)
    order = params["order"]
    assert order.shape == (MANY, 4) and order.dtype == torch.long
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(MANY, 4))
    assert len(torch.unique(order, dim=0)) == 24  # every one of the 4! orders occurs


def test_each_image_gets_its_own_params():
    params = full_recipe().sample(64, 32, 32, generator=generator())
    assert len(torch.unique(params["crop"]["box"], dim=0)) > 48
    for name in ("brightness", "contrast", "saturation", "hue"):
        assert len(torch.unique(params["color"][name])) == 64
    assert len(torch.unique(params["color"]["order"], dim=0)) > 10
    assert len(torch.unique(params["blur"]["sigma"])) == 64
    for flags in (params["flip"]["flip"], params["color"]["apply"], params["grayscale"]["gray"]):
        assert 0 < flags.sum() < 64


def test_same_seed_gives_same_params_and_views():
    recipe = full_recipe()
    first = recipe.sample(8, 32, 24, generator=generator(7))
    second = recipe.sample(8, 32, 24, generator=generator(7))
    other = recipe.sample(8, 32, 24, generator=generator(8))
    for name in recipe.names:
        for key in first[name]:
            assert torch.equal(first[name][key], second[name][key])
    assert not torch.equal(first["crop"]["box"], other["crop"]["box"])
    images = torch.randint(0, 256, (8, 3, 32, 24), dtype=torch.uint8, generator=generator())
    assert torch.equal(recipe(images, generator(3)), recipe(images, generator(3)))


# --- applying hand-set params -------------------------------------------------------------------------------


def test_crop_box_is_honoured():
    image = torch.rand(2, 3, 32, 32, generator=generator())
    crop = RandomResizedCrop(16)
    box = torch.tensor([[8.0, 8.0, 24.0, 24.0], [0.0, 16.0, 16.0, 32.0]])
    out = crop.apply(image, {"box": box})
    assert torch.allclose(out[0], image[0, :, 8:24, 8:24], atol=1e-6)
    assert torch.allclose(out[1], image[1, :, 16:32, 0:16], atol=1e-6)
    # Shrinking by 4 averages each 4 x 4 cell (adaptive sampling), not just the 2 x 2 around its centre.
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 2)
    assert torch.allclose(RandomResizedCrop(8).apply(image, {"box": full}), F.avg_pool2d(image, 4), atol=1e-6)
    # Enlarging is bilinear with aligned pixel centres.
    enlarged = RandomResizedCrop(64).apply(image, {"box": full})
    assert torch.allclose(enlarged, F.interpolate(image, size=64, mode="bilinear", align_corners=False), atol=1e-5)


def test_full_box_at_full_size_is_identity():
    image = torch.rand(3, 3, 20, 20, generator=generator())
    box = torch.tensor([[0.0, 0.0, 20.0, 20.0]] * 3)
    assert torch.allclose(RandomResizedCrop(20).apply(image, {"box": box}), image, atol=1e-6)


def test_flip_is_honoured_per_image():
    image = torch.rand(2, 3, 4, 5, generator=generator())
    out = HorizontalFlip().apply(image, {"flip": torch.tensor([True, False])})
    assert torch.equal(out[0], image[0].flip(-1))
    assert torch.equal(out[1], image[1])


def test_brightness_scales_and_clamps():
    image = torch.rand(2, 3, 4, 4, generator=generator())
    params = jitter_params(2, brightness=1.7)
    params["brightness"][1] = 0.3
    out = ColorJitter().apply(image, params)
    assert torch.allclose(out[0], (image[0] * 1.7).clamp(0, 1), atol=1e-6)
    assert torch.allclose(out[1], image[1] * 0.3, atol=1e-6)


def test_contrast_blends_with_mean_luma():
    image = two_by_two_image()
    mean = 0.4136
    half = ColorJitter().apply(image, jitter_params(1, contrast=0.5))
    expected = 0.5 * image + 0.5 * mean
    assert torch.allclose(half, expected, atol=1e-5)
    double = ColorJitter().apply(image, jitter_params(1, contrast=2.0))
    expected = torch.tensor([[[1.0, 0.0], [2 * 0.5 - mean, 0.0]],
                             [[0.0, 1.0], [2 * 0.5 - mean, 0.0]],
                             [[0.0, 0.0], [2 * 0.5 - mean, 1.0]]]).unsqueeze(0)  # 2 * 0.8 - mean clamped
    assert torch.allclose(double, expected, atol=1e-5)


def test_saturation_blends_with_grayscale():
    image = two_by_two_image()
    luma = torch.tensor([[0.299, 0.587], [0.5, 0.2684]])
    desaturated = ColorJitter().apply(image, jitter_params(1, saturation=0.0))
    assert torch.allclose(desaturated, luma.expand(1, 3, 2, 2), atol=1e-5)
    oversaturated = ColorJitter().apply(image, jitter_params(1, saturation=2.0))
    expected = torch.tensor([[[1.0, 0.0], [0.5, 0.4 - 0.2684]],
                             [[0.0, 1.0], [0.5, 0.4 - 0.2684]],
                             [[0.0, 0.0], [0.5, 1.0]]]).unsqueeze(0)
    assert torch.allclose(oversaturated, expected, atol=1e-5)


def test_hue_shift():
    image = torch.rand(4, 3, 6, 6, generator=generator())
    assert torch.allclose(ColorJitter().apply(image, jitter_params(4, hue=0.0)), image, atol=1e-6)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    green = ColorJitter().apply(red, jitter_params(1, hue=1 / 3))
    assert torch.allclose(green, red.roll(1, dims=1), atol=1e-6)
    blue = adjust_hue(red, torch.tensor([-1 / 3]))
    assert torch.allclose(blue, red.roll(2, dims=1), atol=1e-6)


def test_rgb_hsv_conversions():
    pixels = torch.rand(3, 50, generator=generator())
    pixels[:, :3] = torch.tensor([[0.3, 0.0, 1.0], [0.3, 0.0, 1.0], [0.3, 0.0, 1.0]])  # grays, black, white
    hsv = rgb_to_hsv(pixels.view(1, 3, 5, 10)).view(3, 50)
    expected = torch.tensor([colorsys.rgb_to_hsv(*pixel) for pixel in pixels.T.tolist()]).T
    assert torch.allclose(hsv, expected, atol=1e-5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(pixels.view(1, 3, 5, 10))), pixels.view(1, 3, 5, 10), atol=1e-5)


def test_rgb_from_sixths_takes_any_hue_mod_6_as_colorsys():
    # Hues in sixths from -4 to 12 (a hue shift moves them out of [0, 6)),
    # through every sector's edges, against colorsys on the hue mod 1 turn.
    from ssl_runner.views.color import rgb_from_sixths

    sixths = torch.cat([torch.linspace(-4.0, 12.0, 97), torch.rand(200, generator=generator()) * 16 - 4])
    value = torch.rand(len(sixths), generator=generator())
    chroma = value * torch.rand(len(sixths), generator=generator())
    rgb = rgb_from_sixths(sixths.view(1, -1), chroma.view(1, -1), value.view(1, -1)).view(3, -1)
    expected = torch.tensor([colorsys.hsv_to_rgb((h / 6) % 1.0, c / v if v else 0.0, v)
                             for h, c, v in zip(sixths.tolist(), chroma.tolist(), value.tolist())]).T
    assert torch.allclose(rgb, expected, atol=1e-5)


def test_grayscale_is_weighted_sum_on_three_channels():
    image = torch.rand(2, 3, 4, 4, generator=generator())
    out = RandomGrayscale().apply(image, {"gray": torch.tensor([True, False])})
    luma = 0.299 * image[0, 0] + 0.587 * image[0, 1] + 0.114 * image[0, 2]
    assert out.shape == image.shape
    assert torch.allclose(out[0], luma.expand(3, 4, 4), atol=1e-6)
    assert torch.equal(out[1], image[1])


def test_jitter_order_follows_params_per_image():
    # Two pixels 0.8 and 0.2 of equal channels (their luma is their value).
    image = torch.tensor([0.8, 0.2]).view(1, 1, 1, 2).expand(3, 3, 1, 2).contiguous()
    params = jitter_params(3, brightness=1.5, contrast=0.5)
    # Row i lists ops in the order applied; the last row is not its own inverse.
    params["order"] = torch.tensor([[0, 1, 2, 3], [1, 0, 2, 3], [2, 0, 3, 1]])
    out = ColorJitter().apply(image, params)
    # Brightness first clamps 1.2 to 1, mean 0.65; contrast first: mean 0.5, no clamping.
    brightness_first, contrast_first = torch.tensor([0.825, 0.475]), torch.tensor([0.975, 0.525])
    assert torch.allclose(out[0, 0, 0], brightness_first, atol=1e-6)
    assert torch.allclose(out[1, 0, 0], contrast_first, atol=1e-6)
    assert torch.allclose(out[2, 0, 0], brightness_first, atol=1e-6)


def test_jitter_skips_images_not_applied():
    image = torch.rand(3, 3, 4, 4, generator=generator())
    params = jitter_params(3, brightness=1.5, contrast=0.5, saturation=0.2, hue=0.3)
    params["apply"] = torch.tensor([False, True, False])
    out = ColorJitter().apply(image, params)
    assert torch.equal(out[0], image[0]) and torch.equal(out[2], image[2])
    assert not torch.allclose(out[1], image[1])


def test_jitter_matches_torchvision_functions_in_sampled_order():
    jitter = ColorJitter(p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4)
    images = torch.rand(32, 3, 8, 8, generator=generator())
    params = jitter.sample(32, 8, 8, generator=generator(1))
    out = jitter.apply(images, params)
    functions = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i, image in enumerate(images):
        if params["apply"][i]:
            for op in params["order"][i].tolist():
                image = functions[op](image, params[jitter.ops[op]][i].item())
        # torchvision's luma weighs red 0.2989 where PIL's (used here) weighs 0.299.
        assert torch.allclose(out[i], image, atol=1e-3)


def test_blur():
    blur = GaussianBlur(p=0.5, sigma=(0.1, 2.0), kernel_fraction=0.3)
    images = torch.rand(4, 3, 24, 24, generator=generator())
    sigma = torch.tensor([0.5, 1.0, 1.5, 2.0])
    assert torch.equal(blur.apply(images, {"apply": torch.zeros(4, dtype=torch.bool), "sigma": sigma}), images)
    apply = torch.tensor([True, False, True, True])
    out = blur.apply(images, {"apply": apply, "sigma": sigma})
    assert torch.equal(out[1], images[1])
    size = blur.kernel_size(24)
    assert size == 7
    for i in (0, 2, 3):
        expected = TF.gaussian_blur(images[i], [size, size], [sigma[i].item()] * 2)
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert torch.allclose(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)), atol=0.01)
    assert (out[apply].var(dim=(1, 2, 3)) < 0.5 * images[apply].var(dim=(1, 2, 3))).all()
    constant = torch.full((2, 3, 24, 24), 0.37)
    blurred = blur.apply(constant, {"apply": torch.ones(2, dtype=torch.bool), "sigma": torch.tensor([0.3, 2.0])})
    assert torch.allclose(blurred, constant, atol=1e-6)


def test_blur_at_224_px_stays_within_1e_4_of_torchvisions_full_kernel():
    # Kernels stop at ceil(4 sigma) inside the 23-tap one. A one-pixel line
    # shows the cut (nothing 9 px away at sigma 2, where the full kernel puts
    # 8e-6); noise, the usual case; the whole sigma range.
    blur = GaussianBlur(p=1.0)
    line = torch.zeros(3, 224, 224)
    line[..., 112] = 1.0
    images = torch.stack([line] * 4 + list(torch.rand(4, 3, 224, 224, generator=generator())))
    sigma = torch.tensor([0.1, 0.6, 1.26, 2.0, 0.3, 0.99, 1.5, 1.999])
    out = blur.apply(images, {"apply": torch.ones(8, dtype=torch.bool), "sigma": sigma})
    size = blur.kernel_size(224)
    gap = [(out[i] - TF.gaussian_blur(images[i], [size, size], [sigma[i].item()] * 2)).abs().max().item()
           for i in range(8)]
    assert max(gap) < 1e-4
    assert gap[3] > 5e-6  # the line at sigma 2: cut at 8 px, not the full 11 (which differs by 3e-8)


def test_blur_kernel_is_a_tenth_of_the_side_as_in_simclr():
    blur = GaussianBlur()
    assert [blur.kernel_size(side) for side in (32, 96, 224, 225)] == [3, 9, 23, 23]
    assert all(blur.kernel_size(side) % 2 == 1 for side in range(8, 300))


def test_solarize_inverts_at_or_above_threshold():
    image = torch.tensor([0.125, 0.5, 0.75, 0.875]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    out = Solarize(threshold=0.75).apply(image, {"apply": torch.tensor([True, False])})
    assert torch.equal(out[0, :, 0], torch.tensor([0.125, 0.5, 0.25, 0.125]).expand(3, 4))
    assert torch.equal(out[1], image[1])


# --- recipes ------------------------------------------------------------------------------------------------


def test_apply_is_a_pure_function_of_images_and_params():
    recipe = full_recipe()
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=generator())
    query = recipe.sample(16, 24, 24, generator=generator(1))
    fresh = recipe.sample(16, 24, 24, generator=generator(2))
    saved = {name: {key: value.clone() for key, value in params.items()} for name, params in query.items()}
    images_before = images.clone()
    # LooC's key view: the query's colour params, every other augmentation drawn afresh.
    key_view_params = {**fresh, "color": query["color"]}
    key_view = recipe.apply(images, key_view_params)
    rebuilt = {name: {k: v.clone() for k, v in (saved if name == "color" else fresh)[name].items()}
               for name in recipe.names}
    assert torch.equal(recipe.apply(images, rebuilt), key_view)
    assert not torch.allclose(recipe.apply(images, fresh), key_view)
    assert torch.equal(recipe.apply(images, query), recipe.apply(images, saved))
    assert torch.equal(images, images_before)
    for name in recipe.names:
        for key in saved[name]:
            assert torch.equal(query[name][key], saved[name][key])


def test_views_are_float32_normalised_at_crop_size():
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.1)
    images = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    views = ViewRecipe([RandomResizedCrop(16)], mean, std)(images, generator())
    assert views.dtype == torch.float32 and views.shape == (2, 3, 16, 16)
    expected = (100 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(views, expected.view(1, 3, 1, 1).expand_as(views), atol=1e-5)


def test_uint8_and_unit_float_images_give_the_same_views():
    recipe = full_recipe()
    images = torch.randint(0, 256, (4, 3, 20, 28), dtype=torch.uint8, generator=generator())
    params = recipe.sample(4, 20, 28, generator=generator(1))
    assert torch.allclose(recipe.apply(images, params), recipe.apply(images.float() / 255, params), atol=1e-6)


def test_single_image_batches_work():
    recipe = ViewRecipe.simclr(16, MEAN, STD, hflip_p=1.0, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0,
                               solarize_p=1.0)
    image = torch.randint(0, 256, (1, 3, 40, 30), dtype=torch.uint8, generator=generator())
    params = recipe.sample(1, 40, 30, generator=generator())
    assert all(len(value) == 1 for params_of in params.values() for value in params_of.values())
    view = recipe.apply(image, params)
    assert view.shape == (1, 3, 16, 16) and torch.isfinite(view).all()


def test_simclr_preset():
    cifar = ViewRecipe.simclr(32, MEAN, STD, jitter_strength=0.5)
    assert cifar.names == ["crop", "flip", "color", "grayscale"] and cifar.size == 32
    jitter = cifar.augmentations[2]
    assert jitter.factor_strengths == pytest.approx({"brightness": 0.4, "contrast": 0.4, "saturation": 0.4})
    assert jitter.hue == pytest.approx(0.1) and jitter.p == 0.8
    imagenet = ViewRecipe.simclr(224, MEAN, STD, jitter_strength=1.0, blur_p=0.5, solarize_p=0.2)
    assert imagenet.names == ["crop", "flip", "color", "grayscale", "blur", "solarize"]
    assert imagenet.augmentations[4].kernel_size(224) == 23


def test_a_recipe_is_a_view_maker_of_its_declared_number_of_views():
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8, generator=generator())
    for count in (1, 2, 3):
        recipe = ViewRecipe.simclr(16, MEAN, STD, num_views=count)
        assert isinstance(recipe, ViewMaker) and recipe.num_views == count
        views = recipe.views(images, generator(0))
        assert len(views) == count and all(view.shape == (4, 3, 16, 16) for view in views)
        # Independent draws from one generator, in order: view i is the recipe's i-th call.
        calls = generator(0)
        for view in views:
            assert torch.equal(view, recipe(images.float() / 255, calls))
    with pytest.raises(ValueError, match="at least one view"):
        ViewRecipe([RandomResizedCrop(8)], MEAN, STD, num_views=0)


def test_recipe_needs_a_leading_crop_and_unique_names():
    with pytest.raises(ValueError):
        ViewRecipe([HorizontalFlip(), RandomResizedCrop(8)], MEAN, STD)
    with pytest.raises(ValueError):
        ViewRecipe([RandomResizedCrop(8), HorizontalFlip(), HorizontalFlip()], MEAN, STD)


def test_eval_view_only_normalises():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=generator())
    expected = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(eval_view(images, MEAN, STD), expected, atol=1e-6)
    assert torch.allclose(eval_view(images.float() / 255, MEAN, STD), expected, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_on_cuda_match_cpu():
    recipe = full_recipe()
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8, generator=generator()).cuda()
    params = recipe.sample(8, 24, 24, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    assert all(value.is_cuda for params_of in params.values() for value in params_of.values())
    on_cpu = {name: {key: value.cpu() for key, value in p.items()} for name, p in params.items()}
    assert torch.allclose(recipe.apply(images, params).cpu(), recipe.apply(images.cpu(), on_cpu), atol=1e-4)


@pytest.mark.parametrize("height,width,size", [(32, 32, 32), (96, 96, 32), (96, 80, 64), (40, 64, 24), (32, 32, 48)])
def test_cpu_crop_matrices_equal_roi_align(height, width, size):
    """On a CPU the crop resamples with two matrix products; they must give
    roi_align's result (aligned, adaptive sampling: bilinear when enlarging,
    averaged samples when shrinking)."""
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    images = torch.rand(64, 3, height, width)
    crop = RandomResizedCrop(size)
    box = crop.sample(64, height, width)["box"]
    expected = roi_align(images, torch.cat([torch.arange(64.0)[:, None], box], 1), output_size=(size, size),
                         spatial_scale=1.0, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(crop.apply(images, {"box": box}), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["simclr", "mocov1", "mocov2", "simsiam", "byol", "npid", "looc", "rotnet", "jigsaw",
                                    "relative_loc", "exemplar", "colorization", "context_encoder", "counting", "pirl"])
def test_every_method_makes_the_number_of_views_its_view_maker_declares(cifar_root, tmp_path, monkeypatch, method):
    """The protocol the loaders and `make_views` rely on: the maker, not the
    method, says how many tensors a batch becomes, and makes exactly that many."""
    from conftest import compose_config

    from ssl_runner.methods import build_method

    monkeypatch.setenv("SSL_RUNNER_CACHE", str(tmp_path))  # jigsaw's and PIRL's permutation sets
    small = ["method.permutations=100"] if method in ("jigsaw", "pirl") else []
    small += ["method.num_exemplars=64"] if method == "exemplar" else []
    cfg = compose_config([f"method={method}", "experiment=smoke", f"data.root={cifar_root}",
                          "monitor.knn_every_n_epochs=0", *small])
    module = build_method(cfg, 10, 64)
    maker = module.view_maker
    assert isinstance(maker, ViewMaker) and not hasattr(type(module), "num_views")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=generator())
    assert len(module.make_views(images)) == len(maker.views(images[:1], generator(1))) == maker.num_views
