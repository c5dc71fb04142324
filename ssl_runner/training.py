"""One Lightning `Trainer` per stage: loggers, progress output, checkpoints
(written atomically, loaded with `weights_only=True`), resume."""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig

from ssl_runner.callbacks import EpochRecord, EpochSeeds, StopOnNonFinite
from ssl_runner.config import to_plain
from ssl_runner.safe_io import atomic_torch_save, atomic_write_bytes, remove_orphan_temporaries

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


def _read_metrics(path: str) -> tuple[List[str], List[Dict[str, str]]]:
    if not os.path.isfile(path):
        return [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _write_metrics(path: str, keys: Sequence[str], rows: Sequence[Dict[str, Any]]) -> None:
    """metrics.csv, whole and atomically (a later step reads it)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(keys), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def keep_metrics_through_epoch(path: Path, epoch: int) -> None:
    """Keep the rows of epochs up to `epoch` (the last one of the checkpoint a
    stage resumes from): a killed attempt's later rows would appear twice.

    Lightning logs an epoch's means just after its checkpoint is written: a
    kill in that instant (milliseconds) loses that one row, though not the
    figures in summary.json, which the checkpoint holds (EpochRecord)."""
    keys, rows = _read_metrics(str(path))
    kept = [row for row in rows if row.get("epoch") and int(float(row["epoch"])) <= epoch]
    if len(kept) != len(rows):
        _write_metrics(str(path), keys, kept)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv and rewrites it
    in place; a resumed stage must keep the epochs it logged before the
    interruption, and a kill must not leave half a file: each save rewrites
    the whole file through a temporary one (from the rows kept here, so a
    save costs one write, not a read too)."""

    def _check_log_dir_exists(self) -> None:
        keys, self.written_rows = _read_metrics(self.metrics_file_path)
        self.metrics_keys = sorted(keys)

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self.written_rows += self.metrics
        _write_metrics(self.metrics_file_path, self.metrics_keys, self.written_rows)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside `last.ckpt` and renamed
    (Lightning's own writer stages them in $TMPDIR: a kill leaves an orphan
    there, and on another file system the final move is a copy), and read
    with `weights_only=True`, so a planted pickle never runs."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None
                        ) -> Dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


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
    """A Trainer writing into `run_dir/stage`; with `checkpoint`, `last.ckpt` after
    every epoch in `run_dir/stage/checkpoints` (what resume reads); with `log`,
    the stage's loggers. The runner's callbacks (callbacks.py) come before
    `callbacks`, so that a test's callback sees the epoch's checkpoint."""
    stage_dir = run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [EpochSeeds(cfg.seed, stage), StopOnNonFinite(cfg, stage), EpochRecord(), *(callbacks or [])]
    if checkpoint:
        # One file, replaced at the end of every epoch (also when validation
        # runs only every few epochs): the newest state is all resume needs.
        # Lightning runs it after the other callbacks' epoch-end hooks: the
        # epoch's figures are recorded and its weights checked first.
        callbacks.append(ModelCheckpoint(dirpath=str(stage_dir / "checkpoints"), filename=Path(LAST_CHECKPOINT).stem,
                                         monitor=None, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True,
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
        plugins=[AtomicCheckpointIO()],
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = (int(t.limit_train_batches) if t.limit_train_batches >= 1
                                         else t.limit_train_batches)
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def epoch_record(trainer: L.Trainer) -> EpochRecord:
    return next(c for c in trainer.callbacks if isinstance(c, EpochRecord))


def _readable_checkpoint(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, foreign, or a pickle weights_only refuses
        log.warning("%s is unreadable (%s: %s)", path, type(err).__name__, str(err).splitlines()[0][:200]
                    if str(err) else "")
        return None
    return data if isinstance(data, dict) and "state_dict" in data and "epoch" in data else None


def _set_aside(path: Path) -> Path:
    """Move an unreadable checkpoint out of the way, never over an earlier one."""
    target, n = path.with_name(path.name + ".unreadable"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.unreadable{n}")
    os.replace(path, target)
    return target


def prepare_stage_folder(run_dir: Path, stage: str) -> None:
    """Get `run_dir/stage` ready for an attempt (main process only): remove
    the temporary files of killed writers; if a previous attempt left a
    readable `last.ckpt`, keep the metrics rows of the epochs it holds;
    otherwise (none, or one that cannot be read, which is set aside as
    `last.ckpt.unreadable`) the stage starts afresh, without its old
    metrics.csv."""
    stage_dir = run_dir / stage
    ckpt_dir = stage_dir / "checkpoints"
    for folder in (stage_dir, ckpt_dir):
        remove_orphan_temporaries(folder)
    path = ckpt_dir / LAST_CHECKPOINT
    data = _readable_checkpoint(path) if path.is_file() else None
    if path.is_file() and data is None:
        moved = _set_aside(path)
        log.warning("%s: its last checkpoint could not be read; moved it to %s and starting the stage from "
                    "scratch (there is no earlier state to resume from)", stage, moved)
    if data is None:
        (stage_dir / "metrics.csv").unlink(missing_ok=True)
    else:
        keep_metrics_through_epoch(stage_dir / "metrics.csv", int(data["epoch"]))


def checkpoint_epoch(path: str) -> int:
    """The last complete epoch (0-based) of a stage checkpoint."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def resume_path(run_dir: Path, stage: str) -> Optional[str]:
    """The last checkpoint an interrupted stage left, if any."""
    path = run_dir / stage / "checkpoints" / LAST_CHECKPOINT
    return str(path) if path.is_file() else None
