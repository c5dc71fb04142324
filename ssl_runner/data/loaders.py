"""DataLoaders over `ImageSet`s for pretraining and evaluation.

Every batch is `(images, labels, indices)`. For pretraining with
`views_on=device`, images are uint8 and the method makes the views after the
transfer (image files of varying size: their bytes, `EncodedFileBatches`,
decoded on the device); with `views_on=cpu` the workers make them (per
image, or for image files a batch at a time: `FileViewBatches`), and images
is a list of float views. On a GPU, in-memory pretraining batches are drawn there without a
DataLoader (`DeviceBatches`). Evaluation batches are uint8 images at `image_size`,
normalised on the device.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from ssl_runner.config import DataConfig
from ssl_runner.data.crops import views_of_files
from ssl_runner.data.datasets import ImageSet, resize_center_crop
from ssl_runner.data.encoded import EncodedImages, read_files
from ssl_runner.errors import UserError
from ssl_runner.seeding import epoch_seed
from ssl_runner.views.protocol import ViewMaker
from ssl_runner.views.recipe import ViewRecipe


class PretrainDataset(Dataset):
    """Images with their labels and sample indices (NPID-style methods need the
    index); with a `view_maker`, each item is the `view_maker.num_views`
    views it makes here. With `repeats` > 1 an epoch shows every image that
    many times (Exemplar-CNN's seeds); the index is still the image's position
    in `images`."""

    def __init__(self, images: ImageSet, view_maker: Optional[ViewMaker] = None, repeats: int = 1) -> None:
        self.images = images
        self.view_maker = view_maker
        self.repeats = repeats
        # Set by EpochShuffle.set_epoch: the seed of this epoch's views.
        self.epoch_views_seed = 0

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def __getitem__(self, index: int) -> Tuple[Any, Tensor, int]:
        position = index  # unique in an epoch, also with repeats
        index = index % len(self.images)
        image = self.images.image(index)
        label = self.images.labels[index]
        if self.view_maker is None:
            return image, label, index
        # Each item's views from a generator of its own, seeded by (epoch, sample
        # index): the same views whichever worker makes them, also after a
        # mid-epoch resume, which skips the batches already trained on.
        generator = torch.Generator().manual_seed(self.epoch_views_seed * 1_000_003 + position)
        batch = image.unsqueeze(0)
        return [view[0] for view in self.view_maker.views(batch, generator)], label, index


class FileViewBatches(PretrainDataset):
    """Views of image files of any size made a whole batch at a time in the
    worker (data/crops.py: each file decoded at the size its crops need, the
    rest of the recipe batched on uint8 crops), for `views_on=cpu` with a
    `ViewRecipe`. The batch's views come from a generator seeded by (epoch,
    its first sample), so the same whichever worker makes them."""

    def __getitems__(self, indices: List[int]) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor]:
        assert self.images.paths is not None and isinstance(self.view_maker, ViewRecipe)
        generator = torch.Generator().manual_seed(self.epoch_views_seed * 1_000_003 + indices[0])
        idx = torch.as_tensor(indices, dtype=torch.long) % len(self.images)
        views = views_of_files([self.images.paths[i] for i in idx.tolist()], self.view_maker, generator)
        return views, self.images.labels[idx], idx


class EncodedFileBatches(PretrainDataset):
    """Image files of any size as their bytes, a batch at a time, for
    `views_on=device` with a `ViewRecipe`: the device decodes them and makes
    the views (data/encoded.py)."""

    def __getitems__(self, indices: List[int]) -> Tuple[EncodedImages, Tensor, Tensor]:
        assert self.images.paths is not None
        idx = torch.as_tensor(indices, dtype=torch.long) % len(self.images)
        return read_files([self.images.paths[i] for i in idx.tolist()]), self.images.labels[idx], idx


class InMemoryBatches(PretrainDataset):
    """Uint8 images already in memory, fetched a whole batch at a time: one
    tensor index per batch instead of a Python call and a collate per image
    (the DataLoader passes the sampler's indices to `__getitems__`)."""

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor, Tensor]:
        assert self.images.images is not None
        idx = torch.as_tensor(indices, dtype=torch.long) % len(self.images)
        return self.images.images[idx], self.images.labels[idx], idx


def already_collated(batch: Any) -> Any:
    return batch


class EvalDataset(Dataset):
    """Unaugmented uint8 images at `image_size` (a centre crop when larger)."""

    def __init__(self, images: ImageSet, image_size: int) -> None:
        self.images = images
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor, int]:
        image = self.images.image(index)
        if tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            image = resize_center_crop(image, self.image_size)
        return image, self.images.labels[index], index

    def __getitems__(self, indices: List[int]) -> Tuple[Tensor, Tensor, Tensor]:
        """A whole batch (collated here): one tensor index when the images are
        in memory at the evaluation size."""
        stored = self.images.images
        if stored is not None and tuple(stored.shape[-2:]) == (self.image_size, self.image_size):
            idx = torch.as_tensor(indices, dtype=torch.long)
            return stored[idx], self.images.labels[idx], idx
        return default_collate([self[i] for i in indices])


class EpochShuffle(DistributedSampler):
    """A training loader's order and its workers' seeds, drawn from (seed,
    rank, epoch) alone: this rank's share of a permutation seeded by seed +
    epoch (DistributedSampler's, the same on every rank), and `worker_seeds`,
    the DataLoader's generator, reseeded at every `set_epoch`.

    Lightning calls `set_epoch` at each epoch's start, but makes the first
    epoch's iterator (which draws the worker seeds, and with workers the
    first indices) before that: `_fit` sets the first epoch of an attempt
    (0, or the one after the checkpoint it resumes from) before fitting. So a
    resumed epoch shows the images in the uninterrupted run's order, and its
    workers make the same views."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.worker_seeds = torch.Generator()
        # (epoch, samples): a mid-epoch resume skips that epoch's first samples.
        self.skip: tuple[int, int] = (0, 0)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.skip[0] != epoch:
            self.skip = (epoch, 0)
        self.worker_seeds.manual_seed(epoch_seed(self.seed, "loader workers", self.rank, epoch))
        if isinstance(self.dataset, PretrainDataset):
            self.dataset.epoch_views_seed = epoch_seed(self.seed, "views", self.rank, epoch)

    def resume_within_epoch(self, epoch: int, samples_done: int) -> None:
        """Start at `epoch` after its first `samples_done` samples (a checkpoint
        saved mid-epoch): the rest of the epoch comes in the uninterrupted
        run's order. The length stays the epoch's, so Lightning counts the
        resumed batches on from where the checkpoint left off."""
        self.skip = (epoch, samples_done)
        self.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skipped = self.skip[1] if self.skip[0] == self.epoch else 0
        return itertools.islice(super().__iter__(), skipped, None)


def shuffled_loader(dataset: Dataset, batch_size: int, seed: int, world_size: int = 1, rank: int = 0,
                    drop_last: bool = False, **kwargs: Any) -> DataLoader:
    """A training DataLoader over this rank's share of `dataset`, in EpochShuffle's order."""
    sampler = EpochShuffle(dataset, seed, num_replicas=world_size, rank=rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, generator=sampler.worker_seeds,
                      drop_last=drop_last, **kwargs)


class DeviceBatches:
    """A training loader with no DataLoader: the uint8 images and labels moved
    to the device once, each batch one index on the device, in EpochShuffle's
    order (the same batches as the DataLoader over `InMemoryBatches`, so the
    same training). On a GPU this leaves the step nothing to wait for on the
    host: no worker, no collate, no pinned copy (CIFAR-10 is 184 MB as uint8).
    Lightning calls `sampler.set_epoch` at each epoch's start, as for a
    DataLoader."""

    def __init__(self, images: ImageSet, batch_size: int, sampler: "EpochShuffle", device: torch.device) -> None:
        assert images.images is not None
        self.batch_size, self.sampler = batch_size, sampler
        self.images = images.images.to(device)
        self.labels = images.labels.to(device)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.images.device) % len(self.images)
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.images[idx], self.labels[idx], idx


def holds_images_on_device(device: Optional[torch.device], images: ImageSet) -> bool:
    """Whether pretraining draws its batches on the device (DeviceBatches): on
    a GPU, for in-memory images that take at most a quarter of its memory."""
    if device is None or device.type != "cuda" or images.images is None:
        return False
    return images.images.nbytes <= torch.cuda.get_device_properties(device).total_memory // 4


def loader_kwargs(cfg: DataConfig, persistent: bool = True) -> dict:
    """Workers and pinning. Training loaders pass `persistent=False`: their
    workers are started anew each epoch, seeded from EpochShuffle (persistent
    workers would carry their generators across epochs, out of reach of the
    checkpoint)."""
    kwargs: dict = {"num_workers": cfg.num_workers, "pin_memory": torch.cuda.is_available()}
    if cfg.num_workers > 0:
        kwargs["persistent_workers"] = persistent
    return kwargs


def pretrain_loader(
    cfg: DataConfig, images: ImageSet, view_maker: ViewMaker, world_size: int = 1, *,
    batch_size: int, repeats: int = 1, seed: int = 0, rank: int = 0, device: Optional[torch.device] = None,
) -> Union[DataLoader, DeviceBatches]:
    """This rank's share in batches of `batch_size` (the per-device batch,
    `distributed.batch.batch_sizes`), shuffled (EpochShuffle), last incomplete
    batch dropped (NT-Xent and BatchNorm want full batches); each image
    `repeats` times an epoch. With `views_on=cpu` the workers make each
    image's views with `view_maker` (image files and a `ViewRecipe`: a batch
    at a time, `FileViewBatches`); otherwise batches are uint8 images and
    the method makes the views on the device; there, on a GPU, the batches
    are drawn without a DataLoader (`holds_images_on_device`). Image files
    of varying size with `views_on=device` come as their bytes
    (`EncodedFileBatches`), decoded on the device."""
    per_step = batch_size * world_size
    if len(images) * repeats < per_step:
        raise UserError(
            f"one step's batch on all devices ({batch_size} per device x {world_size} device(s) = {per_step}) is "
            f"larger than the training set ({len(images)} images), so an epoch would hold no batch "
            f"(incomplete batches are dropped). Lower data.batch_size (or data.global_batch_size) or train on more "
            f"images (data.subset={cfg.subset})."
        )
    files_on_device = (cfg.views_on == "device" and images.fixed_size is None and images.paths is not None
                       and images.load_size is None and isinstance(view_maker, ViewRecipe))
    if cfg.views_on == "device" and images.fixed_size is None and not files_on_device:
        raise UserError(
            "data.views_on=device batches whole images (or, with the standard view recipe, decodes image files "
            "on the device), but the images of this data set differ in size and this method's views are not "
            "the standard recipe. Set data.load_size=N (resize when decoding) or data.views_on=cpu (views made "
            "per image)."
        )
    kwargs = loader_kwargs(cfg, persistent=False)
    if files_on_device:
        dataset: Dataset = EncodedFileBatches(images, None, repeats)
        kwargs["collate_fn"] = already_collated
    elif cfg.views_on == "device" and holds_images_on_device(device, images):
        sampler = EpochShuffle(InMemoryBatches(images, None, repeats), seed, num_replicas=world_size, rank=rank)
        return DeviceBatches(images, batch_size, sampler, device)
    elif cfg.views_on == "device" and images.images is not None:
        dataset = InMemoryBatches(images, None, repeats)
        kwargs["collate_fn"] = already_collated
    elif (cfg.views_on == "cpu" and images.paths is not None and images.load_size is None
          and isinstance(view_maker, ViewRecipe)):
        dataset = FileViewBatches(images, view_maker, repeats)
        kwargs["collate_fn"] = already_collated
    else:
        dataset = PretrainDataset(images, view_maker if cfg.views_on == "cpu" else None, repeats)
    return shuffled_loader(dataset, batch_size, seed, world_size, rank, drop_last=True, **kwargs)


def eval_loader(cfg: DataConfig, images: ImageSet, batch_size: Optional[int] = None) -> DataLoader:
    dataset = EvalDataset(images, cfg.image_size)
    return DataLoader(dataset, batch_size=batch_size or cfg.eval_batch_size, shuffle=False,
                      collate_fn=already_collated, **loader_kwargs(cfg))


def labelled_train_loader(cfg: DataConfig, images: ImageSet, view_maker: Optional[ViewMaker], batch_size: int,
                          seed: int = 0, world_size: int = 1, rank: int = 0) -> DataLoader:
    """Training images for a supervised stage, one view each (`view_maker`
    makes one; None: unaugmented images): this rank's share, shuffled
    (EpochShuffle)."""
    if view_maker is not None and view_maker.num_views != 1:
        raise ValueError(f"a supervised stage trains on one view per image, not {view_maker.num_views}")
    in_memory = cfg.views_on == "device" and images.images is not None
    dataset = (InMemoryBatches(images, None) if in_memory
               else PretrainDataset(images, view_maker if cfg.views_on == "cpu" else None))
    kwargs = {**loader_kwargs(cfg, persistent=False), **({"collate_fn": already_collated} if in_memory else {})}
    return shuffled_loader(dataset, batch_size, seed, world_size, rank, **kwargs)
