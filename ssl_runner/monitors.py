"""The pretrain stage's monitors, as Lightning callbacks (`pretrain_callbacks`):

- `KnnMonitor`: in each validation pass (dataloader 0: the unaugmented train
  split, 1: the test split) it keeps what `BaseMethod.validation_step`
  returns (the backbone's features and the online probe's predicted
  classes, computed in the step, under the precision's autocast), and at the
  pass's end logs the weighted kNN accuracy on the test split
  (`val/knn_top1`) and the online linear probe's test accuracy
  (`val/probe_top1`), both in percent;
- `FirstStepClock`: the start-up cost as a user feels it, the seconds from
  the process's start to the end of the first training step of this attempt
  (`seconds_to_first_step(trainer)`).

They live outside `BaseMethod` because they watch a method rather than make
it: no method overrides them, and neither adds state to a checkpoint.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import Tensor

from ssl_runner.distributed import collectives
from ssl_runner.eval.knn import knn_top1
from ssl_runner.runtime import job_age

# The validation loaders of the pretrain stage, by dataloader index.
TRAIN_SPLIT_LOADER, TEST_SPLIT_LOADER = 0, 1


class KnnMonitor(Callback):
    """Weighted kNN (eval.knn's k and temperature) from the train split's
    features to the test split's, and the online probe's accuracy on the test
    split, from one validation pass over both."""

    def __init__(self, knn: DictConfig, num_classes: int) -> None:
        self.k, self.temperature, self.num_classes = knn.k, knn.temperature, num_classes
        self._stores = self._empty_stores()

    @staticmethod
    def _empty_stores() -> List[Dict[str, List[Tensor]]]:
        # Per loader: features "f", labels "y", sample indices "i" and, for the
        # test split, the online probe's per-image correctness "p".
        return [{"f": [], "y": [], "i": [], "p": []} for _ in range(2)]

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stores = self._empty_stores()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        _, labels, indices = batch
        store = self._stores[dataloader_idx]
        store["f"].append(outputs["features"].float())
        store["y"].append(labels)
        store["i"].append(indices)
        if dataloader_idx == TEST_SPLIT_LOADER and "probe_predictions" in outputs:
            store["p"].append((outputs["probe_predictions"] == labels).float())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stores, self._stores = self._stores, self._empty_stores()
        if not (stores[TRAIN_SPLIT_LOADER]["f"] and stores[TEST_SPLIT_LOADER]["f"]):
            return
        # Each rank saw its share of the split (a DistributedSampler, which pads
        # with repeats); gathered by sample index, every image counts once, as
        # on one device.
        gathered = []
        for store in stores:
            idx = torch.cat(store["i"])
            gathered.append({k: collectives.gather_by_index(torch.cat(v), idx) for k, v in store.items() if v})
        train, test = gathered
        top1 = knn_top1(train["f"], train["y"], test["f"], test["y"], self.num_classes, self.k, self.temperature)
        # Equal on every rank (all hold the gathered split); sync_dist only
        # keeps Lightning from warning.
        sync = trainer.world_size > 1
        pl_module.log("val/knn_top1", top1, prog_bar=True, sync_dist=sync)
        if "p" in test:
            pl_module.log("val/probe_top1", test["p"].mean() * 100, prog_bar=True, sync_dist=sync)


class FirstStepClock(Callback):
    """`seconds`: the job's start (the process's for a single run, the job's
    own in a multirun; runtime.job_age) to the end of this attempt's first training
    step (None until a step ran; a resumed stage with nothing left to train
    has none)."""

    def __init__(self) -> None:
        self.seconds: Optional[float] = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.seconds is None:
            self.seconds = round(job_age(), 2)


def pretrain_callbacks(cfg: DictConfig, num_classes: int) -> List[Callback]:
    """The monitors the pretrain stage's Trainer gets (the kNN monitor only
    acts when the stage passes validation loaders)."""
    return [KnnMonitor(cfg.eval.knn, num_classes), FirstStepClock()]


def seconds_to_first_step(trainer: L.Trainer) -> Optional[float]:
    """The `FirstStepClock` reading of a pretrain stage's Trainer."""
    return next(c for c in trainer.callbacks if isinstance(c, FirstStepClock)).seconds


__all__ = ["FirstStepClock", "KnnMonitor", "pretrain_callbacks", "seconds_to_first_step"]
