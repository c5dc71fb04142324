"""CIFAR-100 and STL-10 read from their real on-disk formats (tiny files
written here in those formats, with pixels the tests control), the errors
when they are missing, STL-10's train+unlabeled pretraining split, and the
transfer stage from a real CIFAR-10 pretraining to other data sets."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import cli, compose_config
from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import UNLABELLED, load_split
from ssl_runner.errors import UserError

CIFAR100_CLASSES = [f"class{i:02d}" for i in range(100)]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def data_cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


def random_images(count: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3, side, side), dtype=np.uint8)


def write_cifar100(root: Path, train, train_labels, test, test_labels) -> None:
    """cifar-100-python/{train,test,meta} as published: Python-2-era pickles
    (protocol 2) of dicts whose 'data' rows are the R, G, B planes, each
    row-major 32 x 32."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        rows = np.stack([np.concatenate([image[c].reshape(-1) for c in range(3)]) for image in images])
        batch = {"filenames": [f"img{i}.png" for i in range(len(images))], "batch_label": name,
                 "fine_labels": list(labels), "coarse_labels": [label // 5 for label in labels], "data": rows}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": [f"super{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


def stl10_bytes(images: np.ndarray) -> bytes:
    """STL-10's layout, from its description: per image the red, green and
    blue channels, each written column by column (Fortran order)."""
    return b"".join(image[c].flatten(order="F").tobytes() for image in images for c in range(3))


def write_stl10(root: Path, train, train_labels, test, test_labels, unlabeled) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(images))
        (folder / f"{split}_y.bin").write_bytes(bytes(label + 1 for label in labels))  # stored 1..10
    (folder / "unlabeled_X.bin").write_bytes(stl10_bytes(unlabeled))
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")


def top_bar(side: int, rows: int) -> np.ndarray:
    """A black image with its top `rows` rows red: orientation shows."""
    image = np.zeros((3, side, side), dtype=np.uint8)
    image[0, :rows, :] = 255
    return image


@pytest.fixture
def stl10_root(tmp_path):
    train = random_images(3, 96, seed=0)
    train[1] = top_bar(96, 10)
    test = random_images(2, 96, seed=1)
    unlabeled = random_images(4, 96, seed=2)
    write_stl10(tmp_path / "stl10", train, [0, 9, 4], test, [7, 0], unlabeled)
    return tmp_path / "stl10", train, test, unlabeled


def test_cifar100_pickles_are_read_with_their_fine_labels_and_names(tmp_path):
    train = random_images(6, 32, seed=0)
    train[2] = top_bar(32, 4)
    test = random_images(3, 32, seed=1)
    write_cifar100(tmp_path / "cifar100", train, [0, 5, 99, 5, 0, 99], test, [99, 1, 2])
    cfg = data_cfg(name="cifar100", root=str(tmp_path / "cifar100"), download=False)
    got = load_split(cfg, "train", seed=0)
    assert got.images.shape == (6, 3, 32, 32) and got.images.dtype == torch.uint8
    assert torch.equal(got.images, torch.from_numpy(train))
    # The red bar is on top: the first 32 values of a row are the red plane's top row.
    assert (got.images[2, 0, :4] == 255).all() and (got.images[2, 0, 4:] == 0).all()
    assert got.labels.tolist() == [0, 5, 99, 5, 0, 99] and got.classes == CIFAR100_CLASSES
    test_split = load_split(cfg, "test", seed=0, classes=got.classes)
    assert torch.equal(test_split.images, torch.from_numpy(test)) and test_split.labels.tolist() == [99, 1, 2]


def test_stl10_binary_is_column_major_with_labels_from_one(stl10_root):
    root, train, test, unlabeled = stl10_root
    cfg = data_cfg(name="stl10", root=str(root), image_size=96, download=False)
    got = load_split(cfg, "train", seed=0)
    assert got.images.shape == (3, 3, 96, 96) and torch.equal(got.images, torch.from_numpy(train))
    # H x W as the eye sees it: the bar's rows at the top, across every column.
    assert (got.images[1, 0, :10, :] == 255).all() and (got.images[1, 0, 10:, :] == 0).all()
    assert got.labels.tolist() == [0, 9, 4] and got.classes == STL10_CLASSES
    test_split = load_split(cfg, "test", seed=0, classes=got.classes)
    assert torch.equal(test_split.images, torch.from_numpy(test)) and test_split.labels.tolist() == [7, 0]
    both = load_split(cfg, "train+unlabeled", seed=0)
    assert torch.equal(both.images, torch.from_numpy(np.concatenate([train, unlabeled])))
    assert both.labels.tolist() == [0, 9, 4] + [UNLABELLED] * 4 and not both.has_labels
    # A subset of partly unlabelled data is a plain seeded draw, not one per "class".
    assert len(load_split(OmegaConf.merge(cfg, {"subset": 5}), "train+unlabeled", seed=0)) == 5
    with pytest.raises(UserError, match="no 'extra' split.*train, test, unlabeled"):
        load_split(cfg, "train+extra", seed=0)


def test_a_cut_short_stl10_file_is_named(stl10_root):
    root = stl10_root[0]
    (root / "stl10_binary" / "test_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(UserError, match="test_X.bin holds 1000 bytes"):
        load_split(data_cfg(name="stl10", root=str(root), download=False), "test", seed=0)


def test_missing_archive_without_download_names_data_root_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(tmp_path))
    for name in ("cifar100", "stl10"):
        with pytest.raises(UserError) as err:
            load_split(data_cfg(name=name, root=str(tmp_path / name), download=False), "train", seed=0)
        message = str(err.value)
        assert f"no {name} 'train' split at {tmp_path / name}" in message
        assert "data.root=PATH" in message and "data.download=true" in message and "SSL_RUNNER_DATA" in message
    # One file of a split missing: named.
    write_stl10(tmp_path / "partial", random_images(1, 96, 0), [0], random_images(1, 96, 1), [0],
                random_images(1, 96, 2))
    (tmp_path / "partial" / "stl10_binary" / "unlabeled_X.bin").unlink()
    with pytest.raises(UserError, match="lacks unlabeled_X.bin and data.download is false"):
        load_split(data_cfg(name="stl10", root=str(tmp_path / "partial"), download=False), "train+unlabeled", seed=0)


def test_download_fetches_torchvisions_archive_and_a_failed_one_leaves_nothing(tmp_path):
    import torchvision.datasets
    from torchvision.datasets import utils

    calls = []

    def unpack_tiny_archive(url, download_root, filename=None, md5=None):
        calls.append((url, filename, md5))
        write_cifar100(Path(download_root), random_images(2, 32, 0), [3, 4], random_images(1, 32, 1), [4])

    def no_network(url, download_root, filename=None, md5=None):
        Path(download_root).mkdir(parents=True, exist_ok=True)  # as a real attempt leaves it
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    source = torchvision.datasets.CIFAR100
    with pytest.MonkeyPatch.context() as m:
        m.setattr(utils, "download_and_extract_archive", unpack_tiny_archive)
        got = load_split(data_cfg(name="cifar100", root=str(tmp_path / "data" / "cifar100")), "train", seed=0)
    assert calls == [(source.url, source.filename, source.tgz_md5)] and got.labels.tolist() == [3, 4]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(utils, "download_and_extract_archive", no_network)
        with pytest.raises(UserError) as err:
            load_split(data_cfg(name="stl10", root=str(tmp_path / "new" / "stl10")), "test", seed=0)
    message = str(err.value)
    assert "downloading failed: OSError" in message and "name resolution" in message
    assert "data.root=PATH" in message and "stl10_binary/" in message
    assert not (tmp_path / "new").exists()


def test_data_configs_compose_with_their_statistics_views_and_pretrain_split(tmp_path, stl10_root):
    from ssl_runner.stages.context import RunContext

    cfg = compose_config(["data=cifar100", f"data.root={tmp_path / 'cifar100'}"])
    assert cfg.data.image_size == 32 and cfg.views.name == "simclr_cifar" and cfg.data.pretrain_split is None
    assert list(cfg.data.mean) == [0.5071, 0.4865, 0.4409] and list(cfg.data.std) == [0.2673, 0.2564, 0.2762]
    write_cifar100(tmp_path / "cifar100", random_images(4, 32, 0), [1, 2, 1, 2], random_images(2, 32, 1), [1, 2])
    assert load_split(cfg.data, "train", seed=0).labels.tolist() == [1, 2, 1, 2]

    cfg = compose_config(["data=stl10", f"data.root={stl10_root[0]}"])
    assert cfg.data.image_size == 96 and cfg.views.name == "simclr_imagenet" and cfg.views.blur_p > 0
    assert cfg.data.pretrain_split == "train+unlabeled"
    ctx = RunContext(cfg, tmp_path / "run", manifest=None)
    # Pretraining reads train and the unlabelled images; evaluation train alone.
    assert len(ctx.pretrain_images) == 3 + 4 and not ctx.pretrain_images.has_labels
    assert len(ctx.train_images) == 3 and ctx.train_images.has_labels and len(ctx.test_images) == 2
    with pytest.raises(UserError, match="data.pretrain_split.*never the test split"):
        compose_config(["data=stl10", "data.pretrain_split=train+test"])


def test_transfer_stage_is_planned_only_with_targets_and_never_the_auto_objective():
    from ssl_runner.stages.registry import evaluation_stages

    with pytest.raises(UserError, match="eval.transfer names no data set"):
        compose_config(["pipeline.stages=[pretrain,transfer]"])
    with pytest.raises(UserError, match="'imagefolder', which is not a data set"):
        compose_config(["pipeline.stages=[pretrain,transfer]", "eval.transfer=[imagefolder]"])
    assert evaluation_stages(["pretrain", "knn", "transfer"]) == ["knn"]


def solid_png(path: Path, colour, side: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), colour).save(path)


# Three colour classes; the test images sit between them, one on purpose in
# another class's colour, so the kNN figure depends on the features.
FOLDER_TRAIN = {"red": [(220, 30, 30), (180, 60, 40)], "green": [(30, 210, 40), (60, 170, 50)],
                "blue": [(30, 40, 220), (50, 60, 170)]}
FOLDER_TEST = {"red": [(160, 110, 40), (30, 200, 50)], "green": [(90, 160, 120)], "blue": [(120, 60, 160)]}


@pytest.mark.integration
def test_transfer_from_cifar10_to_cifar100_and_an_image_folder(cifar_root, tmp_path):
    from ssl_runner.data.datasets import resize_center_crop
    from ssl_runner.encoder import load_encoder
    from ssl_runner.eval.knn import knn_top1
    from ssl_runner.views.pixels import eval_view

    data = tmp_path / "data"  # SSL_RUNNER_DATA: the real CIFAR-10 beside a tiny CIFAR-100
    data.mkdir()
    (data / "cifar10").symlink_to(cifar_root)
    write_cifar100(data / "cifar100", random_images(30, 32, 0), [i % 5 for i in range(30)],
                   random_images(10, 32, 1), [i % 5 for i in range(10)])
    folder = tmp_path / "colours"
    for split, classes in (("train", FOLDER_TRAIN), ("test", FOLDER_TEST)):
        for name, colours in classes.items():
            for i, colour in enumerate(colours):
                solid_png(folder / split / name / f"{i}.png", colour)
    run = tmp_path / "run"
    proc = cli(cifar_root, "method=simclr", "data=cifar10", "experiment=smoke", "data.subset=256",
               "data.batch_size=64", "data.test_subset=100", "trainer.max_epochs=1", "monitor.knn_every_n_epochs=0",
               "eval.random_baseline=false", "pipeline.stages=[pretrain,transfer]",
               f"eval.transfer=[cifar100,imagefolder:{folder}]", "eval.transfer_test_subset=5",
               f"hydra.run.dir={run}", extra_env={"SSL_RUNNER_DATA": str(data)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    stage = summary["stages"]["transfer"]
    assert stage["status"] == "done" and list(stage["targets"]) == ["cifar100", f"imagefolder:{folder}"]
    cifar100 = stage["targets"]["cifar100"]
    assert cifar100["train_images"] == 30 and cifar100["test_images"] == 5 and cifar100["classes"] == 100
    protocol = cifar100["protocol"]
    assert protocol["name"] == "transfer:cifar100" and protocol["knn"]["k"] == 200
    assert "cached, unaugmented" in protocol["linear"]["features"]
    assert protocol["linear"]["epochs"] == 5  # the smoke preset's eval.linear
    for record in stage["targets"].values():
        assert 0.0 <= record["knn_top1"] <= 100.0 and 0.0 <= record["linear_top1"] <= 100.0
        assert (run / record["checkpoint"]).is_file()
    # Not the objective: a run that only transfers reports its pretraining loss.
    assert summary["objective"]["key"] == "stages.pretrain.loss"

    # kNN on the colours by hand: the exported encoder on the images at 32 px,
    # normalised with CIFAR-10's statistics (the encoder's, not the folder's).
    encoder = load_encoder(run / "pretrain" / "encoder.pt").backbone.eval()
    run_data = OmegaConf.load(run / "config.yaml").data
    assert run_data.name == "cifar10"

    def features_and_labels(classes):
        names = sorted(FOLDER_TRAIN)
        images = [resize_center_crop(torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 48, 48), 32)
                  for name in names for colour in classes.get(name, [])]
        labels = [names.index(name) for name in names for _ in classes.get(name, [])]
        with torch.no_grad():
            features = encoder(eval_view(torch.stack(images), list(run_data.mean), list(run_data.std)))
        return features, torch.tensor(labels)

    train_f, train_l = features_and_labels(FOLDER_TRAIN)
    test_f, test_l = features_and_labels(FOLDER_TEST)
    expected = knn_top1(train_f, train_l, test_f, test_l, 3, k=200, temperature=0.1)
    assert stage["targets"][f"imagefolder:{folder}"]["knn_top1"] == round(expected, 2)
    assert stage["targets"][f"imagefolder:{folder}"]["test_images"] == 4  # all: fewer than the subset
