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
    return OmegaConf.structured(DataConfig(name="imagefolder", root=str(root), image_size=32, mean=MEAN, std=STD,
                                           in_memory=False, views_on="cpu", batch_size=5, **kw))


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
