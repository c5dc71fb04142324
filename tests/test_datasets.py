"""Data loading: real CIFAR-10 image folders, subsets, unlabelled folders, errors."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import UNLABELLED, balanced_subset, load_split
from ssl_runner.errors import UserError


def data_cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


def test_balanced_subset_is_balanced_seeded_and_sorted():
    labels = torch.arange(10).repeat_interleave(100)
    idx = balanced_subset(labels, 250, seed=3)
    counts = torch.bincount(labels[idx], minlength=10)
    assert len(idx) == 250 and counts.max() - counts.min() <= 1 and set(counts.tolist()) == {25}
    assert torch.equal(idx, balanced_subset(labels, 250, seed=3))
    assert not torch.equal(idx, balanced_subset(labels, 250, seed=4))
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == 250
    odd = balanced_subset(labels, 23, seed=0)
    assert sorted(torch.bincount(labels[odd], minlength=10).tolist()) == [2] * 7 + [3] * 3


def test_real_cifar10_subset_from_the_image_folder(cifar_root):
    train = load_split(data_cfg(root=str(cifar_root), subset=200), "train", seed=0)
    assert train.images.shape == (200, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10
    assert torch.bincount(train.labels).tolist() == [20] * 10
    # Real photographs, not a constant fill.
    assert train.images.float().std() > 30
    test = load_split(data_cfg(root=str(cifar_root), test_subset=50), "test", seed=0)
    assert len(test) == 50 and test.has_labels


def test_unlabelled_folder_and_per_item_decoding(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(6):
        Image.new("RGB", (40 + i, 30), color=(i * 40, 10, 200)).save(tmp_path / "train" / f"{i}.png")
    cfg = data_cfg(name="imagefolder", root=str(tmp_path), in_memory=False, load_size=24)
    train = load_split(cfg, "train", seed=0)
    assert not train.has_labels and (train.labels == UNLABELLED).all() and train.classes == []
    image = train.image(5)
    assert image.shape == (3, 24, 24) and image[0, 12, 12].item() == 200 and image[2, 0, 0].item() == 200
    with pytest.raises(UserError, match="load_size"):
        load_split(data_cfg(name="imagefolder", root=str(tmp_path), in_memory=True), "train", seed=0)


def test_joined_image_folders_keep_train_labels_and_mark_the_rest_unlabelled(tmp_path):
    for folder, count in (("train/cat", 2), ("train/dog", 3), ("unlabeled", 4)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), color=(i, 0, 0)).save(tmp_path / folder / f"{i}.png")
    cfg = data_cfg(name="imagefolder", root=str(tmp_path), in_memory=False)
    both = load_split(cfg, "train+unlabeled", seed=0)
    assert both.classes == ["cat", "dog"] and both.labels.tolist() == [0, 0, 1, 1, 1] + [UNLABELLED] * 4
    assert [Path(p).parent.name for p in both.paths] == ["cat"] * 2 + ["dog"] * 3 + ["unlabeled"] * 4
    # data.subset applies to it (a seeded draw: part of it has no labels).
    assert len(load_split(data_cfg(name="imagefolder", root=str(tmp_path), subset=6), "train+unlabeled", 0)) == 6
    with pytest.raises(UserError, match="extra does not exist"):
        load_split(cfg, "train+extra", seed=0)


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(UserError) as err:
        load_split(data_cfg(name="cifar10", download=False, root=str(tmp_path / "nowhere")), "train", seed=0)
    assert "SSL_RUNNER_DATA" in str(err.value) and "nowhere" in str(err.value)
    with pytest.raises(UserError) as err:
        load_split(data_cfg(name="imagefolder", root=str(tmp_path / "elsewhere")), "test", seed=0)
    assert "data.root=PATH" in str(err.value) and "elsewhere" in str(err.value)
    assert "SSL_RUNNER_DATA" not in str(err.value)


def test_corrupt_image_is_named(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "cat" / "good.png")
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(UserError, match="broken.jpg"):
        load_split(data_cfg(name="imagefolder", root=str(tmp_path)), "train", seed=0)


def test_decoded_images_are_cached_between_runs_and_refreshed_when_a_file_changes(cifar_root, tmp_path,
                                                                                     monkeypatch):
    import os
    import shutil

    import ssl_runner.data.datasets as datasets

    # A small copy of real CIFAR-10 test images (the cache keys on the files).
    folder = tmp_path / "data"
    for cls in ("cat", "dog"):
        (folder / "train" / cls).mkdir(parents=True)
        for src in sorted((cifar_root / "test" / cls).iterdir())[:5]:
            shutil.copy(src, folder / "train" / cls / src.name)
    cfg = data_cfg(name="imagefolder", root=str(folder), cache_dir=str(tmp_path / "cache"))
    first = load_split(cfg, "train", seed=0)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".pt"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these files")

    with monkeypatch.context() as m:
        m.setattr(datasets, "decode_file", no_decoding)
        again = load_split(cfg, "train", seed=0)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)

    # A replaced file (new content and time) is a new entry, decoded afresh.
    victim = sorted((folder / "train" / "dog").iterdir())[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(victim, format="JPEG")
    os.utime(victim, ns=(1, 1))
    changed = load_split(cfg, "train", seed=0)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert changed.images[5].float().mean(dim=(1, 2))[0] > 200  # the red square, not the old dog
    # Switched off, nothing is read or written.
    shutil.rmtree(tmp_path / "cache")
    load_split(data_cfg(name="imagefolder", root=str(folder), cache_dir=str(tmp_path / "cache"),
                        decode_cache=False), "train", seed=0)
    assert not (tmp_path / "cache").exists()
