"""Listing an image-folder split (split/<class>/<images>, or split/<images>
unlabelled) and checking its files before training.

Labels are positions in one class list, the training split's, so that a label
means the same class in every split. Files decoded per item are opened for
their header when listed, so that a corrupt file stops the run before
training, not in a DataLoader worker hours into it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ssl_runner.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
UNLABELLED = -1
# How many folder or file names an error message lists before "and N more".
NAMES_SHOWN = 5


def list_image_folder(split_dir: Path, classes: Optional[List[str]] = None) -> Tuple[List[str], Tensor, List[str]]:
    """The image files of one split, their labels and the class list.

    Class folders are the subfolders of `split_dir`; those whose names start
    with "." (.ipynb_checkpoints, .git) are ignored. Image files
    are the files whose suffix is in IMAGE_SUFFIXES.

    - `classes` None (the training split): the split's own class folders,
      sorted by name, are the class list. A class folder without image files
      is a UserError, since it would count as a class that no image has.
    - `classes` given (the training split's list, for the test split): every
      label is the class's position in `classes`. A class folder that is not
      in `classes` is a UserError (its images would have no label); a class of
      `classes` without a folder, or with an empty one, is fine: the split
      just has no images of it. An empty list (an unlabelled training split)
      has no index to apply, so it counts as None.
    - No class folders at all: unlabelled files directly in `split_dir`
      (labels UNLABELLED, no classes), whatever `classes` is.
    """
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not class_dirs:
        files = [e.path for e in entries if e.is_file() and _is_image(e.name)]
        return files, torch.full((len(files),), UNLABELLED, dtype=torch.long), []
    files_of: Dict[str, List[str]] = {
        e.name: sorted(f.path for f in os.scandir(e.path) if f.is_file() and _is_image(f.name)) for e in class_dirs
    }
    split = split_dir.name
    if classes:
        unknown = [name for name in files_of if name not in classes]
        if unknown:
            raise UserError(
                f"{split}/ has class folder(s) {quoted(unknown)} that train/ does not have, so their images "
                f"have no label in train's class list. Remove them from {split_dir}, or add the class(es) "
                "to train/ (with images) and train again."
            )
    else:
        empty = [name for name, files in files_of.items() if not files]
        if empty:
            raise UserError(
                f"{split}/ has class folder(s) {quoted(empty)} with no image files "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}), which would count as classes that no image has. "
                f"Put images in them or remove them from {split_dir}."
            )
        classes = list(files_of)
    index = {name: position for position, name in enumerate(classes)}
    paths: List[str] = []
    labels: List[int] = []
    for name, files in files_of.items():
        paths += files
        labels += [index[name]] * len(files)
    return paths, torch.tensor(labels, dtype=torch.long), list(classes)


def check_image_headers(paths: Sequence[str], split_dir: Path) -> None:
    """Open every file's header (format and size, no pixel decoding) and raise
    one UserError naming the files that are empty or not images.

    A file cut short after its header still passes; decoding it later raises
    decode_file's UserError naming it.
    """
    from PIL import Image

    unreadable: List[str] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                _ = image.size  # open() has parsed the header; a size means it was whole
        except Image.DecompressionBombError:
            pass  # very large, but torchvision's decoder (tried first) reads it
        except Exception as err:  # UnidentifiedImageError, OSError, a plugin's parse error
            unreadable.append(f"{path} ({type(err).__name__})")
    if unreadable:
        raise UserError(
            f"{len(unreadable)} of the {len(paths)} image files read from {split_dir} are not readable images: "
            f"{quoted(unreadable, quote='')}. They are empty, corrupt or not images despite their suffix: "
            "remove or replace them and run again."
        )


def quoted(names: Sequence[str], quote: str = "'") -> str:
    """The first NAMES_SHOWN names, quoted and comma-separated, then how many more."""
    shown = ", ".join(f"{quote}{name}{quote}" for name in names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown} and {len(names) - NAMES_SHOWN} more"


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES
