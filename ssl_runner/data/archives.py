"""The named data sets (`data=<name>`, eval.transfer's targets), read from
their official archives as unpacked under `data.root`: CIFAR-10 and CIFAR-100
(python pickles), STL-10 (raw binary).

CIFAR-10 goes through torchvision's dataset class, as it always has. CIFAR-100
and STL-10 are read here with numpy and pickle: torchvision's classes check
every file's md5, which would refuse a file that is not the published one
(the tests' small files), and its STL-10 class copies its 2.8 GB of
unlabelled images more than once. torchvision only downloads (its URLs and
checksums), and only when `data.download` is true and a file is missing.

A reader returns `(images, labels, classes)`: uint8 N x 3 x H x W, labels
(UNLABELLED for STL-10's unlabelled split) and the class names. A split may
join parts with "+" (STL-10's "train+unlabeled"): read into one tensor,
never concatenated after the fact (100,000 STL-10 images are 2.8 GB).
"""

from __future__ import annotations

import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ssl_runner.conf_root import config_dir
from ssl_runner.config import DataConfig
from ssl_runner.data.image_folder import UNLABELLED
from ssl_runner.errors import UserError

ENV_VAR = "SSL_RUNNER_DATA"
ArchiveSplit = Tuple[Tensor, Tensor, List[str]]

# STL-10: 96 x 96 colour images, each stored channel by channel, every
# channel column-major (the published Matlab layout).
STL10_SIDE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
# Images read per block: one block's temporary copy is 28 MB.
STL10_BLOCK = 1000


@dataclass(frozen=True)
class Archive:
    # The folder its download unpacks under data.root.
    folder: str
    # Each split's files in `folder` (CIFAR-10's: torchvision checks them).
    splits: Dict[str, Tuple[str, ...]]
    # (folder, split parts) -> (images, labels, classes); None: torchvision's
    # class reads it and downloads it itself (CIFAR-10: `load_cifar10`).
    read: Optional[Callable[[Path, List[str]], ArchiveSplit]]
    # torchvision's dataset class whose URL and md5 the download uses.
    torchvision_class: str


def _unpickle(path: Path) -> dict:
    # The archives were pickled by Python 2: latin1 keeps the bytes as they are.
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def _read_cifar100(folder: Path, parts: List[str]) -> ArchiveSplit:
    """CIFAR-100's `train` / `test` pickles: 'data' N x 3072 (R, G, B planes,
    each row-major 32 x 32) and 'fine_labels'; `meta` names the 100 classes."""
    classes = list(_unpickle(folder / "meta")["fine_label_names"])
    batches = [_unpickle(folder / part) for part in parts]
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    labels = torch.tensor([label for b in batches for label in b["fine_labels"]], dtype=torch.long)
    return torch.from_numpy(data), _checked_labels(labels, len(data), classes, folder), classes


def _read_stl10(folder: Path, parts: List[str]) -> ArchiveSplit:
    """STL-10's `<split>_X.bin` (uint8, per image 3 x 96 x 96 with each
    channel column-major) and `<split>_y.bin` (uint8 labels 1..10; the
    unlabelled split has none); `class_names.txt` names the classes."""
    classes = [line.strip() for line in (folder / "class_names.txt").read_text().splitlines() if line.strip()]
    image_files = [folder / f"{part}_X.bin" for part in parts]
    counts = []
    for path in image_files:
        size = path.stat().st_size
        if size % STL10_IMAGE_BYTES:
            raise UserError(f"{path} holds {size} bytes, not a whole number of {STL10_SIDE}x{STL10_SIDE} images "
                            f"({STL10_IMAGE_BYTES} bytes each): the file is cut short or not STL-10's. Remove "
                            f"{folder} and run again with data.download=true to fetch it afresh.")
        counts.append(size // STL10_IMAGE_BYTES)
    images = torch.empty((sum(counts), 3, STL10_SIDE, STL10_SIDE), dtype=torch.uint8)
    labels = []
    start = 0
    for part, path, count in zip(parts, image_files, counts):
        with open(path, "rb") as fh:
            for first in range(0, count, STL10_BLOCK):
                n = min(STL10_BLOCK, count - first)
                block = np.fromfile(fh, dtype=np.uint8, count=n * STL10_IMAGE_BYTES)
                # (n, channel, column, row) as stored -> (n, channel, row, column)
                images[start + first:start + first + n] = torch.from_numpy(
                    block.reshape(n, 3, STL10_SIDE, STL10_SIDE)).transpose(2, 3)
        if part == "unlabeled":
            labels.append(torch.full((count,), UNLABELLED, dtype=torch.long))
        else:
            stored = np.fromfile(folder / f"{part}_y.bin", dtype=np.uint8).astype(np.int64) - 1  # 1..10 -> 0..9
            labels.append(_checked_labels(torch.from_numpy(stored), count, classes, folder))
        start += count
    return images, torch.cat(labels), classes


def _checked_labels(labels: Tensor, count: int, classes: Sequence[str], folder: Path) -> Tensor:
    if len(labels) != count or (len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(classes))):
        raise UserError(f"the archive in {folder} is inconsistent: {count} images but {len(labels)} labels, or "
                        f"labels outside its {len(classes)} classes. Remove {folder} and run again with "
                        "data.download=true to fetch it afresh.")
    return labels


ARCHIVES: Dict[str, Archive] = {
    "cifar10": Archive("cifar-10-batches-py", {"train": (), "test": ()}, None, "CIFAR10"),
    "cifar100": Archive("cifar-100-python", {"train": ("train", "meta"), "test": ("test", "meta")},
                        _read_cifar100, "CIFAR100"),
    "stl10": Archive("stl10_binary", {
        "train": ("train_X.bin", "train_y.bin", "class_names.txt"),
        "test": ("test_X.bin", "test_y.bin", "class_names.txt"),
        "unlabeled": ("unlabeled_X.bin", "class_names.txt"),
    }, _read_stl10, "STL10"),
}
# Every data.name: the archives, and any image-folder tree.
DATA_NAMES = [*ARCHIVES, "imagefolder"]


def named_data_config(name: str, root: Optional[str] = None) -> DictConfig:
    """The data config of `data=<name>` (conf/data/<name>.yaml against the
    schema, its root resolved now: $SSL_RUNNER_DATA/<name>), or at `root`."""
    path = Path(config_dir()) / "data" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"there is no data config '{name}' (conf/data/{name}.yaml); the data sets are "
                        f"{', '.join(DATA_NAMES)}.")
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(values, dict)
    values.pop("defaults", None)  # the data set's default views: pretraining's, not evaluation's
    if root is not None:
        values["root"] = root
    return OmegaConf.merge(OmegaConf.structured(DataConfig), values)


def data_reference(text: str) -> Tuple[str, Optional[str]]:
    """A data set named on the command line (eval.transfer's targets):
    "cifar100" -> ("cifar100", None), its configured root; "imagefolder:/data/pets"
    -> ("imagefolder", "/data/pets")."""
    name, colon, root = text.partition(":")
    return name, (root if colon else None)


def missing_data_error(cfg: DataConfig, split: str, reason: str) -> UserError:
    """No `split` of the configured data set: what was looked for, and the fix."""
    folders = " and ".join(f"{part}/<class>/<images>" for part in split.split("+"))
    where = f"pass data.root=PATH pointing at a folder with {folders}"
    archive = ARCHIVES.get(cfg.name)
    if archive is None:  # only the named data sets' default roots come from the environment
        return UserError(f"no {cfg.name} '{split}' split at {Path(cfg.root).resolve()} ({reason}). Please {where}.")
    env = os.environ.get(ENV_VAR)
    env_note = f"{ENV_VAR} is '{env}'" if env is not None else f"{ENV_VAR} is not set"
    fetch = "" if cfg.download else ", or set data.download=true to download it there"
    return UserError(
        f"no {cfg.name} '{split}' split at {Path(cfg.root).resolve()} ({reason}; {env_note}). "
        f"Set {ENV_VAR} to the folder that holds {cfg.name}/ (for example {ENV_VAR}=../shared/data), "
        f"or {where} or torchvision's {archive.folder}/{fetch}."
    )


def archive_available(cfg: DataConfig) -> bool:
    """Whether `cfg` names a data set with an archive that is unpacked under
    data.root or may be downloaded there."""
    archive = ARCHIVES.get(cfg.name)
    return archive is not None and ((Path(cfg.root) / archive.folder).is_dir() or cfg.download)


def read_archive(cfg: DataConfig, split: str, classes: Optional[List[str]]) -> ArchiveSplit:
    """`split` of the named data set's archive under data.root (downloaded
    first when a file is missing and data.download is true). `classes`: the
    training split's, which must be the archive's (labels index them)."""
    archive = ARCHIVES[cfg.name]
    parts = split.split("+")
    unknown = [part for part in parts if part not in archive.splits]
    if unknown:
        joined = " (join them with +, e.g. train+unlabeled)" if len(archive.splits) > 2 else ""
        raise UserError(f"{cfg.name} has no '{unknown[0]}' split: its archive holds "
                        f"{', '.join(archive.splits)}{joined}.")
    if archive.read is None:
        if len(parts) > 1:
            raise UserError(f"{cfg.name} splits cannot be joined ('{split}'): name one of {', '.join(archive.splits)}.")
        images, labels, archive_classes = load_cifar10(cfg, split)
    else:
        folder = Path(cfg.root) / archive.folder
        missing = sorted({f for part in parts for f in archive.splits[part] if not (folder / f).is_file()})
        if missing and not cfg.download:
            raise missing_data_error(cfg, split, f"{folder} lacks {', '.join(missing)} and data.download is false")
        if missing:
            _downloading(cfg, split, lambda: _download(cfg.root, archive))
        images, labels, archive_classes = archive.read(folder, parts)
    if classes and list(classes) != list(archive_classes):
        raise UserError(
            f"the {cfg.name} '{split}' split comes from torchvision's archive in {Path(cfg.root).resolve()}, whose "
            f"classes are {', '.join(archive_classes)}, but the training split has the classes {', '.join(classes)}, "
            "so labels would mean different classes. Give both splits as image folders with the same classes "
            f"({split}/<class>/<images>), or both from the archive."
        )
    return images, labels, archive_classes


def _download(root: str, archive: Archive) -> None:
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    source = getattr(torchvision.datasets, archive.torchvision_class)
    download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)


def _downloading(cfg: DataConfig, split: str, fetch: Callable[[], object]) -> object:
    """`fetch()`; when it fails (no network, a partial archive, a read-only
    folder), the first folder it created is removed and a UserError says
    what was looked for and the fix."""
    created = Path(cfg.root).absolute()
    while not created.parent.exists():
        created = created.parent
    first_new = None if created.exists() else created
    try:
        return fetch()
    except Exception as err:
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        folder = ARCHIVES[cfg.name].folder
        raise missing_data_error(
            cfg, split, f"looked for {split.split('+')[0]}/<class>/ image folders and {folder}/; "
            f"downloading failed: {type(err).__name__}: {err}"
        ) from None


def load_cifar10(cfg: DataConfig, split: str) -> ArchiveSplit:
    """CIFAR-10 through torchvision's class (which downloads it when allowed)."""
    from torchvision.datasets import CIFAR10

    ds = _downloading(cfg, split, lambda: CIFAR10(cfg.root, train=(split == "train"), download=cfg.download))
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(ds.targets, dtype=torch.long), list(ds.classes)
