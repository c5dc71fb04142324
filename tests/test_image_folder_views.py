"""Views of image files of any size, a batch at a time in the workers
(data/crops.py, loaders.FileViewBatches), on real photographs written by the
test as JPEG and PNG files (scikit-learn's two sample photographs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from sklearn.datasets import load_sample_images

from ssl_runner.config import DataConfig
from ssl_runner.data.crops import crops_of_file, reduction
from ssl_runner.data.datasets import load_split
from ssl_runner.data.loaders import FileViewBatches, pretrain_loader
from ssl_runner.errors import UserError
from ssl_runner.views.recipe import ViewRecipe

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# (width, height) of the files: landscape, portrait, square, small.
SIZES = [(480, 320), (300, 450), (400, 400), (150, 100)]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """train/<photo>/<k>.jpg|png: crops of the two photographs at varied sizes."""
    root = tmp_path_factory.mktemp("photos")
    for name, photo in zip(["china", "flower"], load_sample_images().images):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for k, (width, height) in enumerate(SIZES):
            image = Image.fromarray(photo[k * 20:, k * 30:]).resize((width, height), Image.BICUBIC)
            image.save(folder / f"{k}.jpg", quality=90)
        Image.fromarray(photo).save(folder / "whole.png")
    return root


def data_cfg(root, **kw):
    kw = {"views_on": "cpu", **kw}
    return OmegaConf.structured(DataConfig(name="imagefolder", root=str(root), image_size=32, mean=MEAN, std=STD,
                                           in_memory=False, batch_size=5, **kw))


def test_reduction_keeps_every_box_at_the_views_resolution():
    boxes = torch.tensor([[0.0, 0.0, 300.0, 260.0], [10.0, 10.0, 110.0, 80.0]])  # smallest side 70
    assert reduction(boxes, 32) == 2  # 70 / 2 = 35 >= 32; 70 / 4 < 32
    assert reduction(boxes, 8) == 8 and reduction(boxes, 224) == 1
    assert reduction(torch.tensor([[0.0, 0.0, 400.0, 400.0]]), 32) == 8


def test_a_jpeg_decoded_at_reduced_size_gives_the_crop_of_the_full_decode(photo_folder):
    """PIL's draft decoding (DCT scaling) against the full decode, cropped and
    resized by the same box: within a few uint8 levels on average."""
    recipe = ViewRecipe.simclr(size=32, mean=MEAN, std=STD, num_views=2)
    path = str(photo_folder / "train" / "china" / "0.jpg")
    for seed in range(4):
        crops = crops_of_file(path, recipe, 2, torch.Generator().manual_seed(seed))
        boxes = torch.cat([recipe.augmentations[0].sample(1, 320, 480, generator=torch.Generator().manual_seed(seed))
                           ["box"] for _ in range(1)])
        with Image.open(path) as full:
            full = full.convert("RGB")
            expected = np.asarray(full.resize((32, 32), Image.BILINEAR, box=tuple(boxes[0].tolist())))
        got = crops[0].permute(1, 2, 0).numpy()
        assert crops[0].dtype == torch.uint8 and got.shape == (32, 32, 3)
        assert np.abs(got.astype(float) - expected.astype(float)).mean() < 4.0


def test_a_png_crop_is_exactly_the_box_of_the_decoded_image(photo_folder):
    recipe = ViewRecipe.simclr(size=32, mean=MEAN, std=STD)
    path = str(photo_folder / "train" / "flower" / "whole.png")
    crop = crops_of_file(path, recipe, 1, torch.Generator().manual_seed(3))[0]
    box = recipe.augmentations[0].sample(1, 427, 640, generator=torch.Generator().manual_seed(3))["box"][0]
    with Image.open(path) as full:
        expected = np.asarray(full.convert("RGB").resize((32, 32), Image.BILINEAR, box=tuple(box.tolist())))
    assert np.array_equal(crop.permute(1, 2, 0).numpy(), expected)


def test_file_batches_are_seeded_by_epoch_and_batch_and_pair_labels(photo_folder):
    cfg = data_cfg(photo_folder)
    images = load_split(cfg, "train", seed=0)
    recipe = ViewRecipe.simclr(size=32, mean=MEAN, std=STD, num_views=2)
    dataset = FileViewBatches(images, recipe)
    first = dataset.__getitems__([0, 3, 5, 9])
    again = dataset.__getitems__([0, 3, 5, 9])
    views, labels, idx = first
    assert len(views) == 2 and all(v.shape == (4, 3, 32, 32) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])  # two independent views
    assert all(torch.equal(a, b) for a, b in zip(views, again[0]))  # same seed, same views
    assert torch.equal(labels, images.labels[idx]) and idx.tolist() == [0, 3, 5, 9]
    dataset.epoch_views_seed = 1
    assert not torch.equal(dataset.__getitems__([0, 3, 5, 9])[0][0], views[0])  # a new epoch, new views


@pytest.mark.parametrize("size", [32, 96])
def test_the_loader_gives_the_same_batches_with_and_without_workers(photo_folder, size):
    recipe = ViewRecipe.simclr(size=size, mean=MEAN, std=STD, num_views=2)
    batches = {}
    for workers in (0, 2):
        cfg = data_cfg(photo_folder, num_workers=workers)
        images = load_split(cfg, "train", seed=0)
        loader = pretrain_loader(cfg, images, recipe, batch_size=5, seed=7)
        assert isinstance(loader.dataset, FileViewBatches)
        batches[workers] = list(loader)
    assert len(batches[0]) == 2  # 10 files, batches of 5
    for (views_a, labels_a, idx_a), (views_b, labels_b, idx_b) in zip(batches[0], batches[2]):
        assert torch.equal(idx_a, idx_b) and torch.equal(labels_a, labels_b)
        assert all(torch.equal(a, b) and a.shape == (5, 3, size, size) for a, b in zip(views_a, views_b))


def test_a_corrupt_file_is_named_in_one_paragraph(photo_folder, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes((photo_folder / "train" / "china" / "0.jpg").read_bytes()[:300])
    recipe = ViewRecipe.simclr(size=32, mean=MEAN, std=STD)
    with pytest.raises(UserError, match="could not decode the image file .*broken.jpg"):
        crops_of_file(str(bad), recipe, 1, torch.Generator().manual_seed(0))


# ---- views_on=device: the files' bytes decoded where the model is (data/encoded.py) ----------------------


def test_files_decoded_on_the_device_are_the_images_and_their_crops_are_their_boxes(photo_folder):
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.ops import roi_align

    from ssl_runner.data.encoded import crops_of_images, decode, read_files

    paths = [str(photo_folder / "train" / "china" / f"{k}.jpg") for k in range(4)]
    paths.insert(2, str(photo_folder / "train" / "flower" / "whole.png"))
    decoded = decode(read_files(paths), torch.device("cpu"))
    assert [tuple(d.shape[1:]) for d in decoded] == [(320, 480), (450, 300), (427, 640), (400, 400), (100, 150)]
    for path, image in zip(paths, decoded):  # the batched call gives each file's own decode, in order
        assert torch.equal(image, decode_image(path, mode=ImageReadMode.RGB))
    recipe = ViewRecipe.simclr(size=32, mean=MEAN, std=STD, num_views=2)
    torch.manual_seed(5)
    crops = crops_of_images(decoded, recipe)
    torch.manual_seed(5)
    for image, got in zip(decoded, crops):  # each box drawn from the image's own size, all its views at once
        _, height, width = image.shape
        box = recipe.augmentations[0].sample(2, height, width)["box"]
        rois = torch.cat([torch.zeros(2, 1), box], dim=1)
        expected = roi_align(image[None].float(), rois, output_size=(32, 32), sampling_ratio=0, aligned=True)
        assert got.dtype == torch.uint8 and got.shape == (2, 3, 32, 32)
        assert torch.equal(got, expected.round().clamp(0, 255).to(torch.uint8))


def test_views_on_device_reads_bytes_in_the_loader_and_the_method_makes_the_views(photo_folder, tmp_path):
    from ssl_runner.data.encoded import EncodedImages, read_files, views_of_encoded
    from ssl_runner.data.loaders import EncodedFileBatches

    # From two workers: the batch's bytes must cross from a worker in one shareable storage.
    cfg = data_cfg(photo_folder, views_on="device", num_workers=2)
    images = load_split(cfg, "train", seed=0)
    recipe = ViewRecipe.simclr(size=32, mean=MEAN, std=STD, num_views=2, jitter_p=0.0, grayscale_p=0.0,
                               hflip_p=0.0)
    loader = pretrain_loader(cfg, images, recipe, batch_size=5, seed=7)
    assert isinstance(loader.dataset, EncodedFileBatches)
    (encoded, labels, idx), _ = list(loader)
    assert isinstance(encoded, EncodedImages) and len(encoded) == 5
    assert all(torch.equal(d, torch.frombuffer(bytearray(open(images.paths[i], "rb").read()), dtype=torch.uint8))
               for d, i in zip(encoded.data, idx.tolist()))
    assert torch.equal(labels, images.labels[idx])
    # A file of one colour gives views of that colour (crop, resize and normalisation only):
    # each view is its own file's.
    solid = tmp_path / "solid"
    colours = [(255, 0, 0), (0, 128, 255), (30, 200, 60)]
    solid.mkdir()
    for k, colour in enumerate(colours):  # of three sizes, the middle one a JPEG
        Image.new("RGB", (200 + 60 * k, 300 - 50 * k), colour).save(solid / f"{k}.{'jpg' if k == 1 else 'png'}",
                                                                     quality=100)
    paths = [str(solid / f"{k}.{'jpg' if k == 1 else 'png'}") for k in range(3)]
    views = views_of_encoded(read_files(paths), recipe, torch.device("cpu"))
    assert len(views) == 2
    for view in views:
        expected = (torch.tensor(colours, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
        assert view.shape == (3, 3, 32, 32)
        assert torch.allclose(view.mean(dim=(2, 3)), expected, atol=1e-5)


def test_views_on_device_with_a_recipe_of_its_own_is_refused_in_one_paragraph(photo_folder):
    cfg = data_cfg(photo_folder, views_on="device")
    images = load_split(cfg, "train", seed=0)

    class OtherViews:
        num_views = 2

    with pytest.raises(UserError, match="data.load_size=N .* or data.views_on=cpu"):
        pretrain_loader(cfg, images, OtherViews(), batch_size=5, seed=7)


def test_a_corrupt_file_decoded_on_the_device_is_named(photo_folder, tmp_path):
    from ssl_runner.data.encoded import decode, read_files

    bad = tmp_path / "broken.jpg"
    bad.write_bytes((photo_folder / "train" / "china" / "0.jpg").read_bytes()[:300])
    good = str(photo_folder / "train" / "china" / "1.jpg")
    with pytest.raises(UserError, match="could not decode the image file .*broken.jpg"):
        decode(read_files([good, str(bad)]), torch.device("cpu"))


def test_the_method_turns_a_batch_of_file_bytes_into_views_and_lightning_leaves_the_bytes_on_the_host(photo_folder):
    from types import SimpleNamespace

    from conftest import compose_config
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from ssl_runner.data.encoded import EncodedImages
    from ssl_runner.methods import build_method

    cfg = compose_config(["method=simclr", "data=imagefolder", f"data.root={photo_folder}", "data.views_on=device",
                          "data.in_memory=false", "data.image_size=32", "backbone=resnet_tiny"])
    images = load_split(cfg.data, "train", seed=0)
    method = build_method(cfg, num_classes=2)
    loader = pretrain_loader(cfg.data, images, method.view_maker, batch_size=5, seed=0)
    batch = next(iter(loader))
    moved = move_data_to_device(batch, torch.device("meta"))  # what Lightning's transfer does to a batch
    assert isinstance(moved[0], EncodedImages) and all(d.device.type == "cpu" for d in moved[0].data)
    assert moved[1].device.type == "meta"
    method._trainer = SimpleNamespace(training=True)
    views, labels, _ = method.on_after_batch_transfer(batch, 0)
    assert len(views) == 2 and all(v.shape == (5, 3, 32, 32) and v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])
    assert torch.isfinite(method.ssl_step(views, batch[2]).loss)


@pytest.mark.parametrize("rotation_p", [0.0, 0.75])
def test_flips_and_quarter_turns_on_the_uint8_crops_give_the_float_paths_views(rotation_p):
    """views_of_crops moves the pixels of the uint8 crops before converting
    them: the same views as converting first, bit for bit."""
    from ssl_runner.views.pixels import normalize, to_unit_float

    recipe = ViewRecipe.simclr(size=24, mean=MEAN, std=STD, blur_p=0.5, solarize_p=0.2, rotation_p=rotation_p)
    crops = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    got = recipe.views_of_crops(crops, torch.Generator().manual_seed(7))
    generator, views = torch.Generator().manual_seed(7), to_unit_float(crops)
    for aug in recipe.augmentations[1:]:  # the float path, as before
        views = aug.apply(views, aug.sample(16, 24, 24, None, generator))
    assert torch.equal(got, normalize(views, MEAN, STD))
    assert [a.name for a in recipe.augmentations if a.moves_pixels_only] == (
        ["flip", "rotation"] if rotation_p else ["flip"])


def test_views_of_crops_made_in_chunks_on_a_cpu_equal_the_whole_batchs(monkeypatch):
    """At 224 px views_of_crops applies its sampled batch three images at a
    time (the floats stay in cache): each image gets its own parameters and
    the pixels of the batch made in one piece, to float rounding (a contrast
    group of one image sums its mean in another order: 4e-6 here)."""
    import ssl_runner.views.recipe as recipe_module

    recipe = ViewRecipe.simclr(size=224, mean=MEAN, std=STD, jitter_strength=1.0, blur_p=0.5, solarize_p=0.2)
    crops = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert recipe_module.CPU_CHUNK_BYTES // (4 * crops[0].numel()) == 3  # chunks of 3, 3 and 2
    chunked = recipe.views_of_crops(crops, torch.Generator().manual_seed(7))
    monkeypatch.setattr(recipe_module, "CPU_CHUNK_BYTES", 2**40)
    whole = recipe.views_of_crops(crops, torch.Generator().manual_seed(7))
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-5)
    assert not torch.allclose(chunked[3:6], recipe.views_of_crops(crops[:3], torch.Generator().manual_seed(7)), atol=0.1)
