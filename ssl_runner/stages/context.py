"""What every stage can reach: the config, the run folder, the manifest and
the data; and the fit-with-resume that every training stage shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from ssl_runner.data.archives import data_reference, named_data_config
from ssl_runner.data.datasets import ImageSet, load_split
from ssl_runner.data.loaders import EpochShuffle
from ssl_runner.distributed import collectives
from ssl_runner.encoder import LoadedEncoder, load_encoder
from ssl_runner.errors import UserError
from ssl_runner.eval.features import extract_features
from ssl_runner.models.backbones import build_backbone
from ssl_runner.run_dir import Manifest
from ssl_runner.checkpoints import read_position, resume_path
from ssl_runner.training import build_trainer, epoch_record, finish_loggers

log = logging.getLogger(__name__)


@dataclass
class TransferTarget:
    """A data set of eval.transfer: its data config, as the encoder reads
    it, and its labelled train and test splits."""

    data: DictConfig
    train: ImageSet
    test: ImageSet


@dataclass
class RunContext:
    """What every stage can reach: the config, the run folder and the data."""

    cfg: DictConfig
    run_dir: Path
    manifest: Manifest
    # Test hook: extra Lightning callbacks for the training stages.
    callbacks: List[Callback] = field(default_factory=list)

    @cached_property
    def train_images(self) -> ImageSet:
        return load_split(self.cfg.data, "train", self.cfg.seed)

    @cached_property
    def test_images(self) -> ImageSet:
        # Labels index the training split's classes in every split.
        classes = self.train_images.classes if self.train_images.has_labels else None
        images = load_split(self.cfg.data, "test", self.cfg.seed, classes=classes)
        if not images.has_labels:
            raise UserError(f"the test split under {self.cfg.data.root} has no class folders, so kNN and linear "
                            "evaluation have nothing to score. Arrange it as test/<class>/<images>.")
        return images

    @cached_property
    def pretrain_images(self) -> ImageSet:
        """What pretraining learns from: data.pretrain_split (STL-10's
        train+unlabeled), else the train split, which evaluation reads."""
        split = self.cfg.data.pretrain_split
        if split in (None, "train"):
            return self.train_images
        return load_split(self.cfg.data, split, self.cfg.seed)

    @cached_property
    def transfer_targets(self) -> Dict[str, TransferTarget]:
        """eval.transfer's data sets, by their names there, each decoded once."""
        return {target: self._transfer_target(target) for target in self.cfg.eval.transfer}

    def _transfer_target(self, target: str) -> TransferTarget:
        d, e = self.cfg.data, self.cfg.eval
        # Images at the pretraining data's side, normalised with its mean and
        # std: the encoder's weights (and its BatchNorm statistics) were
        # learnt on inputs with those statistics, and a frozen evaluation
        # measures its features, not how it copes with inputs on another scale.
        data = OmegaConf.merge(named_data_config(*data_reference(target)), dict(
            image_size=d.image_size, mean=list(d.mean), std=list(d.std), eval_batch_size=d.eval_batch_size,
            subset=e.transfer_subset, test_subset=e.transfer_test_subset, pretrain_split=None,
            decode_cache=d.decode_cache, cache_dir=d.cache_dir))
        train = load_split(data, "train", self.cfg.seed)
        test = load_split(data, "test", self.cfg.seed, classes=train.classes if train.has_labels else None)
        if not (train.has_labels and test.has_labels):
            raise UserError(f"the transfer target '{target}' at {data.root} has unlabelled images, so kNN and the "
                            "linear probe have no classes to score. Arrange it as train/<class>/<images> and "
                            "test/<class>/<images>, or remove it from eval.transfer.")
        return TransferTarget(data, train, test)

    @property
    def num_classes(self) -> int:
        return len(self.train_images.classes)

    def encoder(self) -> LoadedEncoder:
        """The encoder to evaluate: this run's pretrain export, else `checkpoint=`."""
        path = self.manifest.encoder_path() or (Path(self.cfg.checkpoint) if self.cfg.checkpoint else None)
        if path is None:
            raise UserError(
                "there is no encoder to evaluate: the pipeline has no pretrain stage and no checkpoint was "
                "given. Add pretrain to pipeline.stages, or pass checkpoint=PATH (a pretrain/encoder.pt)."
            )
        encoder = load_encoder(path)
        encoder.backbone.use_channels_last(self.cfg.trainer.channels_last)
        return self.at_feature_layer(encoder)

    def random_init_encoder(self) -> LoadedEncoder:
        """An untrained encoder of the configured architecture, seeded by `seed`,
        evaluated at eval.feature_layer like the trained one (the twins' input)."""
        L.seed_everything(self.cfg.seed, verbose=False)
        backbone = build_backbone(self.cfg.backbone, self.cfg.data.image_size).use_channels_last(
            self.cfg.trainer.channels_last)
        return self.at_feature_layer(LoadedEncoder(backbone, "random_init", "random initialisation"))

    def at_feature_layer(self, encoder: LoadedEncoder) -> LoadedEncoder:
        """`encoder` evaluated at eval.feature_layer, when one is set."""
        if self.cfg.eval.feature_layer is not None:
            encoder.backbone = encoder.backbone.truncated(self.cfg.eval.feature_layer)
        return encoder

    @property
    def device(self) -> torch.device:
        """Where this rank computes outside Lightning (feature extraction)."""
        return collectives.local_device(self.cfg.trainer.accelerator)

    def features(self, encoder: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """Train and test features of `encoder`, computed in shards across the
        ranks and gathered: every rank gets all of them, in data-set order."""
        precision = self.cfg.trainer.precision
        train_f, train_l = extract_features(encoder, self.train_images, self.cfg.data, self.device, precision)
        test_f, test_l = extract_features(encoder, self.test_images, self.cfg.data, self.device, precision)
        return {"train": train_f, "train_labels": train_l, "test": test_f, "test_labels": test_l}


def fit_stage(ctx: RunContext, stage: str, module: L.LightningModule, max_epochs: int,
              train: DataLoader, val: Optional[List[DataLoader]] = None, test: Optional[DataLoader] = None,
              callbacks: Optional[List[Callback]] = None, **trainer_overrides: Any) -> Tuple[L.Trainer,
                                                                                            Dict[str, float]]:
    """Fit with the stage's checkpoints, resuming from `last.ckpt` if a previous
    attempt left one, then test once if `test` is given. Returns the trainer and
    the figures of the last epoch (kept in the checkpoint, so a resumed stage
    has them even when nothing was left to train)."""
    trainer = build_trainer(ctx.cfg, ctx.run_dir, stage, max_epochs,
                            callbacks=[*(callbacks or []), *ctx.callbacks], **trainer_overrides)
    ckpt = resume_path(ctx.run_dir, stage)
    position = read_position(ckpt) if ckpt else None
    if isinstance(train.sampler, EpochShuffle):
        # The attempt's first epoch (Lightning makes its iterator before setting the
        # sampler's epoch) and, from a mid-epoch checkpoint, the samples already done.
        if position is None or position.epoch_finished:
            train.sampler.set_epoch(0 if position is None else position.next_epoch)
        else:
            train.sampler.resume_within_epoch(position.epoch, position.batches_done * train.batch_size)
    if ckpt:
        assert position is not None
        log.info("%s: resuming from %s (saved at %s)", stage, ckpt, position.describe(len(train)))
        # A stage's sub-folder (transfer/<target>) records under the stage.
        ctx.manifest.data["stages"][stage.split("/")[0]]["resumed_from"] = str(Path(ckpt).relative_to(ctx.run_dir))
        ctx.manifest.save()
    try:
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt)
        fit_metrics = dict(epoch_record(trainer).metrics)
        if test is not None:
            trainer.test(module, dataloaders=test, verbose=False)
    finally:
        finish_loggers(trainer.loggers)
    return trainer, fit_metrics
