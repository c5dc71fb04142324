"""Image files of any size made into views on the training device
(`data.views_on=device` without `data.load_size`, with the standard view
recipe): the DataLoader workers only read each file's bytes; on the device,
the batch is decoded (torchvision's `decode_jpeg` takes the whole list at
once, on a CUDA device with nvJPEG), each image's random resized crops are
taken from it (`roi_align`, boxes drawn from its own size, all its views in
one call), and the rest of the recipe runs on the batch of crops
(`ViewRecipe.views_of_crops`), as for in-memory images.

On a CPU the same path decodes on the CPU: it works and is tested, but
`views_on=cpu` is the faster choice there (data/crops.py decodes each JPEG
at the reduced size its crops need).
"""

from __future__ import annotations

import itertools
from typing import List, Sequence

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.ops import roi_align

from ssl_runner.data.crops import unreadable
from ssl_runner.views.recipe import ViewRecipe

JPEG_START = (0xFF, 0xD8)


class EncodedImages:
    """A batch of image files' bytes, one uint8 tensor end to end (`blob`:
    one ordinary storage, which a DataLoader worker can send; the tensors of
    `torchvision.io.read_file` could not be sent, and the loader hung) with
    each file's `ends`, and their paths. It stays on the CPU, where the GPU decoder reads its input: being
    neither a sequence, a dataclass nor a thing with `.to`, Lightning's batch
    transfer and the DataLoader's pinning pass it by."""

    def __init__(self, blob: Tensor, ends: List[int], paths: List[str]) -> None:
        self.blob, self.ends, self.paths = blob, ends, paths

    @property
    def data(self) -> List[Tensor]:
        """Each file's bytes (views of `blob`)."""
        return [self.blob[start:end] for start, end in zip([0, *self.ends[:-1]], self.ends)]

    def __len__(self) -> int:
        return len(self.ends)


def read_files(paths: Sequence[str]) -> EncodedImages:
    contents = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                contents.append(file.read())
        except OSError as err:
            raise unreadable(path, err) from None
    blob = torch.empty(sum(map(len, contents)), dtype=torch.uint8)
    if len(blob):
        blob.copy_(torch.frombuffer(bytearray(b"".join(contents)), dtype=torch.uint8))
    return EncodedImages(blob, list(itertools.accumulate(map(len, contents))), list(paths))


def decode(encoded: EncodedImages, device: torch.device) -> List[Tensor]:
    """Each file as a uint8 3 x H x W image on `device`: the JPEGs in one
    batched call on that device, any other format on the CPU, then moved."""
    data = encoded.data
    is_jpeg = [len(d) > 2 and (int(d[0]), int(d[1])) == JPEG_START for d in data]
    images: List[Tensor] = [torch.empty(0)] * len(data)
    jpegs = [i for i, yes in enumerate(is_jpeg) if yes]
    try:
        if jpegs:
            for i, image in zip(jpegs, decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB,
                                                   device=device)):
                images[i] = image
    except RuntimeError:
        # One bad file fails the whole batched call: decode one by one to name it.
        for i in jpegs:
            try:
                images[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
            except RuntimeError as err:
                raise unreadable(encoded.paths[i], err) from None
    for i, yes in enumerate(is_jpeg):
        if not yes:
            try:
                images[i] = decode_image(data[i], mode=ImageReadMode.RGB).to(device)
            except RuntimeError as err:
                raise unreadable(encoded.paths[i], err) from None
    return images


def crops_of_images(images: Sequence[Tensor], recipe: ViewRecipe) -> List[Tensor]:
    """`recipe.num_views` random resized crops of each decoded image, as uint8
    num_views x 3 x size x size (rounded, as data/crops.py's are)."""
    crop, size = recipe.augmentations[0], recipe.size
    crops = []
    for image in images:
        _, height, width = image.shape
        box = crop.sample(recipe.num_views, height, width, image.device)["box"]
        rois = torch.cat([torch.zeros(len(box), 1, device=image.device), box], dim=1)
        resized = roi_align(image[None].float(), rois, output_size=(size, size), spatial_scale=1.0,
                            sampling_ratio=0, aligned=True)
        crops.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return crops


def views_of_encoded(encoded: EncodedImages, recipe: ViewRecipe, device: torch.device) -> List[Tensor]:
    """`recipe.num_views` views of each file, made on `device`: one
    N x 3 x size x size tensor per view."""
    crops = crops_of_images(decode(encoded, device), recipe)
    return [recipe.views_of_crops(torch.stack([c[v] for c in crops])) for v in range(recipe.num_views)]


__all__ = ["EncodedImages", "crops_of_images", "decode", "read_files", "views_of_encoded"]
