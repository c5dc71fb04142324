"""`LabelFreeMonitor`: at the end of every pretraining epoch, the label-free
measures of eval/label_free.py on a fixed set of training images, logged as
`monitor/rankme`, `monitor/alignment` and `monitor/uniformity`, and kept per
epoch in the checkpoint (`label_free_result` hands them to summary.json).

- Images: `monitor.label_free_images` training images (all, when the split
  has fewer), drawn once from `seed`: the same images every epoch, on every
  rank and in every attempt of the run.
- Features: the backbone's, at eval.feature_layer when one is set (what the
  evaluation stages read), in eval mode and float32 without autocast (the
  figures do not depend on trainer.precision).
- RankMe on the unaugmented images (what kNN and the linear probe see, and
  independent of the augmentation); alignment between two augmented views
  of each image; uniformity on the first view (Wang & Isola measure both on
  the augmented data, as in their loss).
- Views: SimCLR's crop, flip, colour jitter and grayscale at their defaults
  (ViewRecipe.simclr), whatever the method and cfg.views, so the figures
  compare across methods. Their random numbers come from a generator seeded
  from (seed, epoch), never from the global generators: the training draws
  the same numbers with the monitor on or off, and a resumed run measures
  what the uninterrupted one did.

Every rank measures the same images with the same draws, but the figures
recorded and logged are rank 0's, broadcast: without trainer.sync_batchnorm
each rank's BatchNorm running statistics follow its own batches (DDP
broadcasts rank 0's only on a forward through its wrapper), and rank 0's
weights are the ones exported and evaluated.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.data.datasets import ImageSet
from ssl_runner.data.loaders import EvalDataset
from ssl_runner.eval.label_free import LABEL_FREE_MEASURES, alignment, rankme, uniformity
from ssl_runner.safe_io import finite_or_none
from ssl_runner.seeding import epoch_seed
from ssl_runner.training import epoch_record
from ssl_runner.views.pixels import eval_view
from ssl_runner.views.recipe import ViewRecipe

# Decimals of the figures in summary.json.
DECIMALS = 4


def monitored_indices(num_images: int, count: int, seed: int) -> Tensor:
    """The sorted indices of the `count` monitored images (all when fewer), from `seed` alone."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, "label-free monitor images", 0, 0))
    return torch.randperm(num_images, generator=generator)[:count].sort().values


class LabelFreeMonitor(Callback):
    """RankMe, alignment and uniformity of the backbone at each epoch's end;
    `history`: measure -> one value per finished epoch (None where not
    finite), saved in and restored from the checkpoint."""

    def __init__(self, cfg: DictConfig, images: ImageSet) -> None:
        self.seed = cfg.seed
        self.feature_layer: Optional[str] = cfg.eval.feature_layer
        self.batch_size = cfg.data.eval_batch_size
        self.image_size = cfg.data.image_size
        self.mean, self.std = list(cfg.data.mean), list(cfg.data.std)
        self.recipe = ViewRecipe.simclr(size=self.image_size, mean=self.mean, std=self.std)
        self.images = images.select(monitored_indices(len(images), cfg.monitor.label_free_images, cfg.seed))
        self._pixels: Optional[Tensor] = None
        self.history: Dict[str, List[Optional[float]]] = {name: [] for name in LABEL_FREE_MEASURES}

    def pixels(self) -> Tensor:
        """The monitored images as one uint8 batch at image_size (a centre crop
        when larger, as the evaluation reads them), decoded on first use."""
        if self._pixels is None:
            dataset = EvalDataset(self.images, self.image_size)
            self._pixels = torch.stack([dataset[i][0] for i in range(len(dataset))])
        return self._pixels

    @torch.no_grad()
    def measure(self, backbone: nn.Module, epoch: int, device: torch.device) -> Dict[str, float]:
        """The three figures of `backbone` at `epoch` (its train/eval modes are restored)."""
        modes = [(module, module.training) for module in backbone.modules()]
        encoder = backbone.truncated(self.feature_layer) if self.feature_layer else backbone
        generator = torch.Generator(device=device).manual_seed(
            epoch_seed(self.seed, "label-free monitor views", 0, epoch))
        plain, first, second = [], [], []
        try:
            backbone.eval()
            pixels = self.pixels()
            for start in range(0, len(pixels), self.batch_size):
                batch = pixels[start:start + self.batch_size].to(device)
                plain.append(encoder(eval_view(batch, self.mean, self.std)).float().cpu())
                first.append(encoder(self.recipe(batch, generator)).float().cpu())
                second.append(encoder(self.recipe(batch, generator)).float().cpu())
        finally:
            for module, training in modes:
                module.training = training
        z1 = torch.cat(first)
        return {"rankme": rankme(torch.cat(plain)), "alignment": alignment(z1, torch.cat(second)),
                "uniformity": uniformity(z1)}

    def _rank_zero_figures(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> Dict[str, float]:
        return trainer.strategy.broadcast(self.measure(pl_module.backbone, epoch, pl_module.device), src=0)

    def _record(self, epoch: int, figures: Dict[str, float]) -> None:
        for name, value in figures.items():
            values = self.history[name][:epoch]  # a rerun epoch replaces its value
            self.history[name] = values + [None] * (epoch - len(values)) + [finite_or_none(round(value, DECIMALS))]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint that holds a finished epoch without its figures (saved
        # before this callback's turn: stops at an epoch's end did so before
        # issue 18; now only ModelCheckpoint writes an epoch-end checkpoint,
        # after every hook): the restored weights are that epoch's last, so
        # they are measured now, as the uninterrupted run did.
        record = epoch_record(trainer)
        if record.epoch_finished and len(self.history["rankme"]) == record.epoch:
            self._record(record.epoch, self._rank_zero_figures(trainer, pl_module, record.epoch))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        figures = self._rank_zero_figures(trainer, pl_module, trainer.current_epoch)
        self._record(trainer.current_epoch, figures)
        for name, value in figures.items():
            # Equal on every rank; sync_dist only keeps Lightning from warning.
            pl_module.log(f"monitor/{name}", value, on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1)

    def state_dict(self) -> Dict[str, Any]:
        return {"history": {name: list(values) for name, values in self.history.items()}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict.get("history", {})
        self.history = {name: list(saved.get(name, [])) for name in LABEL_FREE_MEASURES}


def label_free_callbacks(cfg: DictConfig, images: ImageSet) -> List[Callback]:
    """The monitor, when monitor.label_free is on."""
    return [LabelFreeMonitor(cfg, images)] if cfg.monitor.label_free else []


def label_free_result(trainer: L.Trainer) -> Dict[str, Any]:
    """The pretrain stage's summary entries: each measure's last value (None
    when it was not finite) and, under `monitors`, one value per epoch; empty
    when the monitor is off."""
    monitor = next((c for c in trainer.callbacks if isinstance(c, LabelFreeMonitor)), None)
    if monitor is None:
        return {}
    history = {name: list(values) for name, values in monitor.history.items()}
    last = {name: (values[-1] if values else None) for name, values in history.items()}
    return {**last, "monitors": history}


__all__ = ["LabelFreeMonitor", "label_free_callbacks", "label_free_result", "monitored_indices"]
