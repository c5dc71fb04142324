"""Data sets as uint8 images: CIFAR-10, CIFAR-100 and STL-10 (their archives,
read in archives.py, or image folders) and any image-folder tree, with
class-balanced seeded subsets.

Every split becomes an `ImageSet`: labels plus either a uint8 tensor of all
images (small data sets, decoded once) or the file paths (decoded per item).
Views and normalisation happen later, so the same `ImageSet` serves
pretraining, kNN and the linear probe.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from ssl_runner.config import DataConfig
from ssl_runner.data.archives import archive_available, missing_data_error, read_archive
from ssl_runner.data.image_folder import UNLABELLED, check_image_headers, list_image_folder
from ssl_runner.errors import UserError

log = logging.getLogger(__name__)


def decode_file(path: str, load_size: Optional[int] = None) -> Tensor:
    """Decode one image file to uint8 3xHxW RGB; optionally resize the shorter
    side to `load_size` and centre-crop a square."""
    try:
        image = decode_image(path, mode=ImageReadMode.RGB)
    except Exception:  # formats torchvision cannot read: fall back to PIL
        try:
            from PIL import Image

            with Image.open(path) as pil:
                image = torch.from_numpy(np.asarray(pil.convert("RGB")).copy()).permute(2, 0, 1)
        except Exception as err:
            raise UserError(
                f"could not decode the image file {path} ({type(err).__name__}: {err}). "
                "The file is corrupt or not an image: remove or replace it and run again."
            ) from None
    if load_size is not None:
        image = resize_center_crop(image, load_size)
    return image


def resize_center_crop(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to `size` (antialiased) and centre-crop size x size."""
    if min(image.shape[-2:]) != size:
        image = TF.resize(image, size, antialias=True)
    if image.shape[-1] != size or image.shape[-2] != size:
        image = TF.center_crop(image, [size, size])
    return image


@dataclass
class ImageSet:
    """One split: labels plus images in memory (uint8 Nx3xHxW) or file paths."""

    labels: Tensor
    classes: List[str]
    images: Optional[Tensor] = None
    paths: Optional[List[str]] = None
    load_size: Optional[int] = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels != UNLABELLED).all())

    @property
    def fixed_size(self) -> Optional[int]:
        """The side of every image when all are the same square size, else None."""
        if self.images is not None:
            return int(self.images.shape[-1]) if self.images.shape[-1] == self.images.shape[-2] else None
        return self.load_size

    def image(self, index: int) -> Tensor:
        if self.images is not None:
            return self.images[index]
        assert self.paths is not None
        return decode_file(self.paths[index], self.load_size)

    def select(self, indices: Tensor) -> "ImageSet":
        idx = indices.tolist()
        return ImageSet(
            labels=self.labels[indices],
            classes=self.classes,
            images=None if self.images is None else self.images[indices],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            load_size=self.load_size,
        )

    def into_memory(self, cache_dir: Optional[Path] = None) -> "ImageSet":
        """Decode every file once into one uint8 tensor (images must share a
        size). With `cache_dir`, the tensor is kept there between runs, keyed
        by the files' paths, sizes and modification times."""
        if self.images is not None:
            return self
        assert self.paths is not None
        cache = DecodeCache(cache_dir, self.paths, self.load_size) if cache_dir is not None else None
        if cache is not None:
            images = cache.load()
            if images is not None:
                return ImageSet(self.labels, self.classes, images=images, load_size=self.load_size)
        # Tens of seconds for a 50,000-image split: say so before it starts.
        log.info("decoding %d images from %s (once: %s)", len(self.paths), Path(self.paths[0]).parent.parent
                 if self.paths else "?", f"kept in {cache.path} for later runs" if cache is not None
                 else "data.decode_cache=false, so every run decodes them")
        decoded = [decode_file(p, self.load_size) for p in self.paths]
        shapes = {tuple(t.shape) for t in decoded}
        if len(shapes) > 1:
            raise UserError(
                f"data.in_memory=true needs images of one size, but found {len(shapes)} sizes "
                f"(e.g. {sorted(shapes)[:3]}). Set data.load_size=N to resize them when decoding, "
                "or data.in_memory=false data.views_on=cpu to decode per image."
            )
        images = torch.stack(decoded) if decoded else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        if cache is not None:
            cache.save(images)
        return ImageSet(self.labels, self.classes, images=images, load_size=self.load_size)


class DecodeCache:
    """Decoded images of a list of files, as one uint8 tensor in `cache_dir`.

    The key hashes every path with its size and modification time (and the
    decode size), so a changed, added or removed file makes a new entry. Files
    are written atomically (several ranks may decode at once); an unreadable
    entry is decoded again. Nothing is ever written beside the data.
    """

    VERSION = 1

    def __init__(self, cache_dir: Path, paths: List[str], load_size: Optional[int]) -> None:
        digest = hashlib.sha256(f"{self.VERSION}:{load_size}".encode())
        for path in paths:
            st = os.stat(path)
            digest.update(f"\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        self.path = Path(cache_dir).expanduser() / f"decoded-{len(paths)}-{digest.hexdigest()[:24]}.pt"
        self.count = len(paths)

    def load(self) -> Optional[Tensor]:
        if not self.path.is_file():
            return None
        try:
            images = torch.load(self.path, weights_only=True, mmap=True)
        except Exception as err:  # a truncated or foreign file: decode again
            log.warning("decode cache %s unreadable (%s); decoding again", self.path, err)
            return None
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or len(images) != self.count:
            return None
        log.info("decoded images from the cache %s", self.path)
        return images

    def save(self, images: Tensor) -> None:
        # Straight to a temporary file (not through memory, as safe_io does:
        # a decoded split can be gigabytes), renamed when complete.
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(images, tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as err:  # a read-only or full cache folder only costs speed
            tmp.unlink(missing_ok=True)
            log.warning("could not write the decode cache %s (%s)", self.path, err)


def balanced_subset(labels: Tensor, size: int, seed: int) -> Tensor:
    """Indices of `size` items, as equal a share per class as possible, seeded.

    Data with unlabelled images (an unlabelled folder, STL-10's
    train+unlabeled) gets a plain random subset. The result is sorted so that
    a subset of a subset keeps the original order.
    """
    n = len(labels)
    if size >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    if bool((labels == UNLABELLED).any()):
        return torch.randperm(n, generator=gen)[:size].sort().values
    classes = labels.unique().tolist()
    per_class, extra = divmod(size, len(classes))
    # Which classes take one of the `extra` leftover slots is also seeded.
    bonus = set(torch.randperm(len(classes), generator=gen)[:extra].tolist())
    chosen = []
    for i, c in enumerate(classes):
        members = (labels == c).nonzero().flatten()
        take = per_class + (1 if i in bonus else 0)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:take]])
    return torch.cat(chosen).sort().values


def decode_cache_dir(cfg: DataConfig) -> Optional[Path]:
    """Where decoded image folders are kept: data.cache_dir, else
    $SSL_RUNNER_CACHE, else ~/.cache/ssl_runner; None with data.decode_cache=false."""
    if not cfg.decode_cache:
        return None
    return Path(cfg.cache_dir or os.environ.get("SSL_RUNNER_CACHE") or "~/.cache/ssl_runner").expanduser()


def load_split(cfg: DataConfig, split: str, seed: int, classes: Optional[List[str]] = None) -> ImageSet:
    """The `split` ("train", "test", or parts joined by "+" such as STL-10's
    "train+unlabeled") of the configured data set, subset (data.test_subset
    for "test", else data.subset) and (if `cfg.in_memory`) decoded; per-item
    files have their headers checked.

    Image folders root/<part>/ come first; without any, the named data set's
    archive (archives.py). `classes` is the training split's class list,
    given for the test split so that its labels are positions in train's
    list: a test class folder that train lacks is a UserError, a train class
    that test lacks is fine (rules in `list_image_folder`). An archive has
    fixed classes, so `classes` other than the archive's is a UserError.
    None: the split lists its own classes."""
    root = Path(cfg.root)
    part_dirs = [root / part for part in split.split("+")]
    subset = cfg.test_subset if split == "test" else cfg.subset
    if any(d.is_dir() for d in part_dirs):
        images = _image_folders(cfg, split, part_dirs, classes)
    elif archive_available(cfg):
        archive_images, labels, archive_classes = read_archive(cfg, split, classes)
        images = ImageSet(labels, archive_classes, images=archive_images)
    else:
        raise missing_data_error(cfg, split, f"{part_dirs[0]} does not exist")
    if subset is not None:
        images = images.select(balanced_subset(images.labels, subset, seed))
    if cfg.in_memory:  # decode_file names a corrupt file as it decodes
        images = images.into_memory(decode_cache_dir(cfg))
    elif images.paths is not None:  # only the files this run reads (after the subset)
        check_image_headers(images.paths, root if len(part_dirs) > 1 else part_dirs[0])
    log.info(
        "%s %s: %d images, %d classes, %s",
        cfg.name, split, len(images), len(images.classes),
        "in memory" if images.images is not None else "decoded per item",
    )
    return images


def _image_folders(cfg: DataConfig, split: str, part_dirs: List[Path], classes: Optional[List[str]]) -> ImageSet:
    """The files of root/<part>/ for every part, labelled in the first
    labelled part's class list (an unlabelled part: UNLABELLED)."""
    paths: List[str] = []
    labels: List[Tensor] = []
    split_classes: List[str] = []
    for part_dir in part_dirs:
        if not part_dir.is_dir():
            raise missing_data_error(cfg, split, f"{part_dir} does not exist")
        part_paths, part_labels, part_classes = list_image_folder(part_dir, classes or split_classes)
        if not part_paths:
            raise missing_data_error(cfg, split, f"{part_dir} holds no image files")
        split_classes = split_classes or part_classes
        paths += part_paths
        labels.append(part_labels)
    return ImageSet(torch.cat(labels), split_classes, paths=paths, load_size=cfg.load_size)
