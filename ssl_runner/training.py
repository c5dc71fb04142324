"""One Lightning `Trainer` per stage: loggers, progress output, checkpoints
(written atomically, loaded with `weights_only=True`), resume."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig

from ssl_runner import progress
from ssl_runner.callbacks import BatchSeeds, EpochRecord, StopOnNonFinite
from ssl_runner.checkpoints import LAST_CHECKPOINT, AtomicCheckpointIO, read_metrics, write_metrics
from ssl_runner.progress import PlainProgress, StageProgressBar
from ssl_runner.stopping import StopOnSignal, TimedCheckpoint
from ssl_runner.wandb_logging import finish_stage_runs, stage_logger

log = logging.getLogger(__name__)



class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv and rewrites it
    in place; a resumed stage must keep the epochs it logged before the
    interruption, and a kill must not leave half a file: each save rewrites
    the whole file through a temporary one (from the rows kept here, so a
    save costs one write, not a read too)."""

    def _check_log_dir_exists(self) -> None:
        keys, self.written_rows = read_metrics(Path(self.metrics_file_path))
        self.metrics_keys = sorted(keys)

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self.written_rows += self.metrics
        write_metrics(Path(self.metrics_file_path), self.metrics_keys, self.written_rows)
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """CSV metrics in the stage folder, appended to across resumptions."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def use_rich_progress(cfg: DictConfig) -> bool:
    mode = cfg.trainer.progress
    if mode == "auto":
        return sys.stdout.isatty() and not os.environ.get("CI")
    return mode == "rich"


def build_loggers(cfg: DictConfig, run_dir: Path, stage: str, stage_dir: Path) -> List[Logger]:
    """CSV metrics in the stage folder; with logger=wandb also the stage's W&B
    run (wandb_logging.py: grouped by pipeline, tagged with the sweep)."""
    loggers: List[Logger] = [ResumableCSVLogger(save_dir=str(stage_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        loggers.append(stage_logger(cfg, run_dir, stage))
    return loggers


def log_stage_result(cfg: DictConfig, run_dir: Path, stage: str, metrics: Dict[str, float]) -> None:
    """Log a stage that trains nothing (kNN) like the others: CSV in its folder
    and, with logger=wandb, a W&B run of its own."""
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    loggers = build_loggers(cfg, run_dir, stage, stage_dir)
    for logger in loggers:
        logger.log_metrics(metrics, step=0)
        logger.save()
    finish_loggers(loggers)


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """Close each stage's W&B run so that the next stage starts its own."""
    finish_stage_runs(loggers)


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    stage: str,
    max_epochs: int,
    callbacks: Optional[List[Callback]] = None,
    checkpoint: bool = True,
    log: bool = True,
    **overrides: Any,
) -> L.Trainer:
    """A Trainer writing into `run_dir/stage`; with `checkpoint`, `last.ckpt` after
    every epoch, every trainer.checkpoint_every_minutes and on a stop signal
    in `run_dir/stage/checkpoints` (what resume reads); with `log`,
    the stage's loggers. The runner's callbacks (callbacks.py) come before
    `callbacks`, so that a test's callback sees the epoch's checkpoint."""
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    last = stage_dir / "checkpoints" / LAST_CHECKPOINT
    # EpochRecord before StopOnSignal, which saves the position it records.
    callbacks = [BatchSeeds(cfg.seed, stage), StopOnNonFinite(cfg, stage), EpochRecord(),
                 StopOnSignal(stage, last if checkpoint else None), *(callbacks or [])]
    if checkpoint:
        # One file, replaced at the end of every epoch (also when validation
        # runs only every few epochs) and every trainer.checkpoint_every_minutes
        # mid-epoch: the newest state is all resume needs (the one it replaces
        # is kept as previous.ckpt). Lightning runs these after the other
        # callbacks' hooks: the figures are recorded and the weights checked first.
        name = dict(dirpath=str(last.parent), filename=last.stem, monitor=None, save_top_k=1,
                    enable_version_counter=False)
        callbacks.append(ModelCheckpoint(**name, every_n_epochs=1, save_on_train_epoch_end=True))
        if cfg.trainer.checkpoint_every_minutes:
            callbacks.append(TimedCheckpoint(**name, save_on_train_epoch_end=False,
                                             train_time_interval=timedelta(minutes=cfg.trainer.checkpoint_every_minutes)))
    rich = use_rich_progress(cfg)
    work = progress.PLAN.work.get(stage, 0.0) if progress.PLAN is not None else 0.0
    if rich:
        callbacks.append(StageProgressBar(stage, work))
    elif cfg.trainer.progress != "none":
        callbacks.append(PlainProgress(stage, work, cfg.trainer.progress_every_steps,
                                       cfg.trainer.progress_every_seconds))
    t = cfg.trainer
    kwargs: Dict[str, Any] = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        # trainer.sync_batchnorm is applied by the stages (global_batchnorm.py):
        # Lightning's plugin would use torch's SyncBatchNorm, which refuses CPU tensors.
        sync_batchnorm=False,
        default_root_dir=str(stage_dir),
        logger=build_loggers(cfg, run_dir, stage, stage_dir) if log else False,
        callbacks=callbacks,
        enable_progress_bar=rich,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=checkpoint,
        plugins=[AtomicCheckpointIO()],
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = (int(t.limit_train_batches) if t.limit_train_batches >= 1
                                         else t.limit_train_batches)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def epoch_record(trainer: L.Trainer) -> EpochRecord:
    return next(c for c in trainer.callbacks if isinstance(c, EpochRecord))
