"""Faults of image-folder data sets, found before training and reported as one
paragraph: class folders that would shift one split's labels, files that are
not images, and a file that fails to decode in a DataLoader worker.

The trees are small copies of real CIFAR-10 images under tmp_path.
"""

from __future__ import annotations

import io
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import load_split
from ssl_runner.data.loaders import pretrain_loader
from ssl_runner.errors import UserError
from ssl_runner.views.recipe import ViewRecipe

IMAGES_PER_CLASS = 6


def data_cfg(root: Path, **kw):
    cfg = OmegaConf.structured(DataConfig)
    cfg.name, cfg.root, cfg.decode_cache = "imagefolder", str(root), False
    for key, value in kw.items():
        cfg[key] = value
    return cfg


def copy_classes(cifar_root: Path, split_dir: Path, classes, count: int = IMAGES_PER_CLASS) -> None:
    """`count` real CIFAR-10 training images of each class into split_dir/<class>/."""
    for name in classes:
        (split_dir / name).mkdir(parents=True)
        for src in sorted((cifar_root / "train" / name).iterdir())[:count]:
            shutil.copy(src, split_dir / name / src.name)


@pytest.mark.integration
def test_empty_class_folder_in_train_is_named(cifar_root, tmp_path):
    copy_classes(cifar_root, tmp_path / "train", ["cat", "dog"])
    (tmp_path / "train" / "zebra").mkdir()
    with pytest.raises(UserError) as err:
        load_split(data_cfg(tmp_path), "train", seed=0)
    assert "'zebra'" in str(err.value) and "no image files" in str(err.value)
    assert "'cat'" not in str(err.value)


@pytest.mark.integration
def test_test_labels_are_train_indices_when_train_has_a_class_that_test_lacks(cifar_root, tmp_path):
    copy_classes(cifar_root, tmp_path / "train", ["airplane", "cat", "dog", "frog"])
    # A notebook's checkpoint folder, even holding an image, is no class.
    copy_classes(cifar_root, tmp_path / "train" / ".ipynb_checkpoints", ["cat"], count=1)
    # Train classes without test images: airplane has no folder (sorted first, it
    # shifted every test label), frog an empty one. Both are fine.
    copy_classes(cifar_root, tmp_path / "test", ["cat", "dog"])
    (tmp_path / "test" / "frog").mkdir()
    train = load_split(data_cfg(tmp_path), "train", seed=0)
    assert train.classes == ["airplane", "cat", "dog", "frog"] and len(train) == 4 * IMAGES_PER_CLASS
    test = load_split(data_cfg(tmp_path, in_memory=False), "test", seed=0, classes=train.classes)
    dog = str(sorted((tmp_path / "test" / "dog").iterdir())[0])
    assert test.labels[test.paths.index(dog)].item() == train.classes.index("dog") == 2
    for in_memory in (False, True):
        test = load_split(data_cfg(tmp_path, in_memory=in_memory), "test", seed=0, classes=train.classes)
        assert test.classes == train.classes and len(test) == 2 * IMAGES_PER_CLASS
        assert sorted(test.labels.unique().tolist()) == [train.classes.index("cat"), train.classes.index("dog")]


@pytest.mark.integration
def test_test_class_folder_unknown_to_train_is_named(cifar_root, tmp_path):
    copy_classes(cifar_root, tmp_path / "train", ["cat", "dog"])
    copy_classes(cifar_root, tmp_path / "test", ["cat", "dog", "frog"])
    train = load_split(data_cfg(tmp_path), "train", seed=0)
    with pytest.raises(UserError) as err:
        load_split(data_cfg(tmp_path), "test", seed=0, classes=train.classes)
    message = str(err.value)
    assert "test/ has class folder(s) 'frog' that train/ does not have" in message
    assert "'cat'" not in message and "add the class" in message


def test_archive_with_other_classes_than_train_is_refused(tmp_path, monkeypatch):
    import torchvision.datasets

    class Archive:  # torchvision's CIFAR10 as far as load_split reads it
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

        def __init__(self, root, train, download):
            self.data = np.zeros((4, 32, 32, 3), dtype=np.uint8)
            self.targets = [3, 5, 3, 5]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Archive)
    (tmp_path / "cifar-10-batches-py").mkdir()
    cfg = data_cfg(tmp_path, name="cifar10", download=False)
    assert load_split(cfg, "test", seed=0, classes=list(Archive.classes)).labels.tolist() == [3, 5, 3, 5]
    with pytest.raises(UserError, match="torchvision's archive.*cat, dog"):
        load_split(cfg, "test", seed=0, classes=["cat", "dog"])


@pytest.mark.integration
def test_empty_and_text_files_named_png_are_named_when_listing(cifar_root, tmp_path):
    copy_classes(cifar_root, tmp_path / "train", ["cat", "dog"])
    empty = tmp_path / "train" / "cat" / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "train" / "dog" / "notes.png"
    text.write_text("not an image, whatever the suffix says\n")
    with pytest.raises(UserError) as err:
        load_split(data_cfg(tmp_path, in_memory=False), "train", seed=0)
    message = str(err.value)
    assert str(empty) in message and str(text) in message and message.startswith("2 of the ")
    assert "remove or replace them" in message


@pytest.mark.integration
def test_file_cut_after_its_header_fails_in_a_worker_as_the_original_paragraph(cifar_root, tmp_path):
    copy_classes(cifar_root, tmp_path / "train", ["cat"], count=7)
    png = io.BytesIO()
    Image.open(cifar_root / "train" / "dog" / "0000.jpg").save(png, format="PNG")
    truncated = tmp_path / "train" / "cat" / "truncated.png"
    truncated.write_bytes(png.getvalue()[:60])
    with Image.open(truncated) as header_only:  # the listing's header check lets it through
        assert header_only.size == (32, 32)
    cfg = data_cfg(tmp_path, in_memory=False, views_on="cpu", num_workers=2, batch_size=4)
    images = load_split(cfg, "train", seed=0)
    assert str(truncated) in images.paths and len(images) == 8  # two full batches: every file is read
    recipe = ViewRecipe.simclr(size=32, mean=list(cfg.mean), std=list(cfg.std), num_views=2)
    loader = pretrain_loader(cfg, images, recipe, batch_size=cfg.batch_size)
    with pytest.raises(UserError) as err:
        for _ in loader:
            pass
    message = str(err.value)
    assert message.startswith("could not decode the image file") and str(truncated) in message
    assert "Traceback" not in message and "Traceback" not in err.value.paragraph()
    del loader


def test_user_error_takes_the_original_message_out_of_torchs_worker_text():
    original = ("could not decode the image file /data/train/cat/0001.png (OSError: image file is truncated). "
                "The file is corrupt or not an image: remove or replace it and run again.")
    # What torch._utils.ExceptionWrapper.reraise passes to UserError(...) for a worker's error.
    worker_text = (
        "Caught UserError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "/venv/lib/python3.11/site-packages/torch/utils/data/_utils/worker.py", line 349, in _worker_loop\n'
        "    data = fetcher.fetch(index)  # type: ignore[possibly-undefined]\n"
        '  File "/work/ssl_runner/data/datasets.py", line 47, in decode_file\n'
        "    raise UserError(\n"
        f"ssl_runner.errors.UserError: {original}\n"
    )
    err = UserError(worker_text)
    assert str(err) == original
    assert err.paragraph(width=88) == textwrap.fill(f"error: {original}", width=88, break_long_words=False,
                                                    break_on_hyphens=False)
    # The same through torch's own wrapper, with a cause in the traceback too.
    from torch._utils import ExceptionWrapper

    try:
        try:
            raise ValueError("the cause")
        except ValueError as cause:
            raise UserError(original) from cause
    except UserError:
        wrapper = ExceptionWrapper(sys.exc_info(), where="in pin memory thread for device 0")
    with pytest.raises(UserError) as reraised:
        wrapper.reraise()
    assert str(reraised.value) == original
    # Anything else is still one paragraph of the message itself.
    assert str(UserError("Caught nothing,\n  just  a message")) == "Caught nothing, just a message"



# ---- the same faults through the runner ------------------------------------------------------

def _tree(cifar_root: Path, root: Path, classes=("cat", "dog", "ship"), count: int = 16) -> Path:
    for split, n in (("train", count), ("test", count // 2)):
        copy_classes(cifar_root, root / split, classes, count=n)
    return root


IMAGE_FOLDER_RUN = ["data=imagefolder", "experiment=smoke", "data.batch_size=16", "eval.linear.epochs=1",
                    "eval.random_baseline=false", "monitor.knn_every_n_epochs=0", "trainer.max_epochs=1"]


@pytest.mark.integration
def test_the_runner_labels_test_images_by_train_classes(cifar_root, tmp_path, monkeypatch):
    """test/ lacks train's first class (which used to shift every test label by one)."""
    from conftest import compose_config

    from ssl_runner.stages.context import RunContext

    copy_classes(cifar_root, tmp_path / "train", ["airplane", "cat", "dog"])
    copy_classes(cifar_root, tmp_path / "test", ["cat", "dog"])
    cfg = compose_config([*IMAGE_FOLDER_RUN, f"data.root={tmp_path}"])
    ctx = RunContext(cfg, tmp_path / "run", manifest=None)
    assert ctx.test_images.classes == ["airplane", "cat", "dog"]
    assert sorted(set(ctx.test_images.labels.tolist())) == [1, 2]


@pytest.mark.integration
def test_images_of_mixed_sizes_run_through_every_stage(cifar_root, tmp_path):
    """Per-item decoding with images from 24 to 48 px: pretraining, the
    artifact images stacked after it, kNN and the linear probe."""
    from conftest import cli, strict_json

    root = _tree(cifar_root, tmp_path / "data")
    for i, path in enumerate(sorted(root.rglob("*.jpg"))):
        side = (24, 32, 40, 48)[i % 4]
        Image.open(path).resize((side, side + 8 * (i % 2))).save(path)
    run_dir = tmp_path / "run"
    proc = cli(cifar_root, *IMAGE_FOLDER_RUN, f"data.root={root}", "data.in_memory=false", "data.views_on=cpu",
               "method=colorization", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "done" and summary["stages"]["knn"]["test_images"] == 24
    assert (run_dir / "pretrain" / summary["stages"]["pretrain"]["artifacts"][0].split("/")[-1]).is_file()


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["cut after its header", "zero bytes"])
def test_a_corrupt_image_stops_the_run_with_its_path(cifar_root, tmp_path, fault):
    """Cut after its header: found by a DataLoader worker, reported as the
    worker's own paragraph. Zero bytes: found when the split is listed,
    before any stage starts."""
    from conftest import cli

    root = _tree(cifar_root, tmp_path / "data")
    bad = root / "train" / "dog" / "bad.png"
    png = io.BytesIO()
    Image.open(next((root / "train" / "cat").iterdir())).save(png, format="PNG")
    bad.write_bytes(png.getvalue()[:60] if fault == "cut after its header" else b"")
    run_dir = tmp_path / "run"
    proc = cli(cifar_root, *IMAGE_FOLDER_RUN, f"data.root={root}", "data.in_memory=false", "data.views_on=cpu",
               "data.num_workers=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Caught" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert str(bad) in message
    if fault == "zero bytes":
        assert "not readable images" in message and not (run_dir / "pretrain").exists()
    else:
        assert message.startswith("error: could not decode the image file")
