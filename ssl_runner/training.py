"""One Lightning `Trainer` per stage: loggers, progress output, checkpoints, resume."""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig

from ssl_runner.config import to_plain

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"


class PlainProgress(Callback):
    """One log line per epoch, for CI logs and files (no terminal control codes)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_epoch") or "/" in k}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        log.info("%s epoch %d/%d (%.1f s): %s", self.stage, trainer.current_epoch + 1, trainer.max_epochs,
                 seconds, shown)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed stage
    must keep the epochs it logged before the interruption, so append."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))


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
    """CSV metrics in the stage folder; with logger=wandb also one W&B run per
    stage, grouped by the pipeline run, with the stage as job type."""
    loggers: List[Logger] = [ResumableCSVLogger(save_dir=str(stage_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        group = f"{run_dir.parent.name}_{run_dir.name}"
        kwargs: Dict[str, Any] = {}
        if cfg.logger.mode is not None:
            kwargs["mode"] = cfg.logger.mode
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=group,
                job_type=stage,
                name=f"{group}-{stage}",
                save_dir=str(run_dir),
                tags=list(cfg.logger.tags),
                config=to_plain(cfg),
                **kwargs,
            )
        )
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
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


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
    """A Trainer writing into `run_dir/stage`; with `checkpoint`, `last.ckpt` every
    epoch in `run_dir/stage/checkpoints` (what resume reads); with `log`, the
    stage's loggers."""
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    callbacks = list(callbacks or [])
    if checkpoint:
        # One file, replaced every epoch: the newest state is all resume needs.
        callbacks.append(ModelCheckpoint(dirpath=str(stage_dir / "checkpoints"), filename=Path(LAST_CHECKPOINT).stem,
                                         monitor=None, save_top_k=1, every_n_epochs=1,
                                         enable_version_counter=False))
    rich = use_rich_progress(cfg)
    if rich:
        callbacks.append(RichProgressBar(leave=True))
    elif cfg.trainer.progress != "none":
        callbacks.append(PlainProgress(stage))
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
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = (int(t.limit_train_batches) if t.limit_train_batches >= 1
                                         else t.limit_train_batches)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def resume_path(run_dir: Path, stage: str) -> Optional[str]:
    """The last checkpoint an interrupted stage left, if any."""
    path = run_dir / stage / "checkpoints" / LAST_CHECKPOINT
    return str(path) if path.is_file() else None
