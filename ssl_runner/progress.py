"""What a run tells its user while it works: the start banner, and progress
with the stage (`stage 1/5 pretrain`), 1-based epochs and an ETA for the
stage and for the whole run.

On a terminal the progress is Lightning's rich bar, relabelled; elsewhere
(CI, a log file, SLURM) one plain line every `trainer.progress_every_steps`
steps or `trainer.progress_every_seconds` seconds, and one per epoch.

The run's ETA adds to the stage's remaining time an estimate for the stages
after it: each stage's work counted in image passes (a forward pass of one
image is 1, forward and backward 3) and timed at the rate measured in this
stage. It is rough for stages unlike the current one, and says so (≈).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from omegaconf import DictConfig

from ssl_runner.data.label_subsets import LABEL_FRACTIONS

log = logging.getLogger("ssl_runner")

# Steps timed before an ETA is shown (the first ones include warm-up).
STEPS_BEFORE_ETA = 5


def stage_work(cfg: DictConfig, stage: str, train_images: int, test_images: int, views: int) -> float:
    """A stage's work in image passes (forward 1, forward + backward 3)."""
    base = stage.removesuffix("_random_init")
    read_both = train_images + test_images
    if base == "pretrain":
        return 3.0 * cfg.trainer.max_epochs * train_images * views
    if base in ("finetune", "nonlinear"):
        settings = cfg.eval[base]
        return 3.0 * settings.epochs * train_images + test_images
    if base.startswith("semi_"):  # semi_<tag>: eval.semi.epochs_<tag> on that fraction of the labels
        tag = base.removeprefix("semi_")
        return 3.0 * cfg.eval.semi[f"epochs_{tag}"] * LABEL_FRACTIONS[tag] * train_images + test_images
    if base in ("linear", "linear_concat") and cfg.eval.linear.augment:
        return cfg.eval.linear.epochs * train_images + test_images
    if base.startswith("probe_"):
        return 4.0 * read_both
    return float(read_both)  # kNN, the linear probe on cached features, export


@dataclass
class RunPlan:
    """The run's stages and their estimated work, and which one is running."""

    stages: List[str]
    work: Dict[str, float]
    current: int = 0
    started: float = field(default_factory=time.monotonic)

    def enter(self, stage: str) -> None:
        self.current = self.stages.index(stage)

    def label(self) -> str:
        return f"stage {self.current + 1}/{len(self.stages)} {self.stages[self.current]}"

    def work_after_current(self) -> float:
        return sum(self.work.get(s, 0.0) for s in self.stages[self.current + 1:])


PLAN: Optional[RunPlan] = None


def set_plan(plan: Optional[RunPlan]) -> None:
    global PLAN
    PLAN = plan


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class StageClock:
    """Times a training stage's batches (after the first few) and turns the
    rate into the stage's and the run's remaining time."""

    def __init__(self, stage: str, work: float) -> None:
        self.stage, self.work = stage, work
        self._timed_from: Optional[float] = None
        self._timed_batches = 0
        self._seen = 0

    def batch_done(self) -> None:
        self._seen += 1
        if self._seen == STEPS_BEFORE_ETA:
            self._timed_from = time.monotonic()
        elif self._seen > STEPS_BEFORE_ETA:
            self._timed_batches += 1

    def seconds_per_batch(self) -> Optional[float]:
        if self._timed_from is None or self._timed_batches < STEPS_BEFORE_ETA:
            return None
        return (time.monotonic() - self._timed_from) / self._timed_batches

    def etas(self, trainer: L.Trainer) -> Dict[str, str]:
        per_batch = self.seconds_per_batch()
        total = trainer.num_training_batches
        if per_batch is None or not isinstance(total, int):
            return {}
        epochs_left = trainer.max_epochs - trainer.current_epoch - 1
        batches_left = total - (trainer.fit_loop.epoch_loop.batch_idx + 1) + epochs_left * total
        stage_left = batches_left * per_batch
        out = {"stage ETA": duration(stage_left)}
        if PLAN is not None and self.work > 0:
            work_per_second = self.work / (trainer.max_epochs * total * per_batch)
            out["run ETA"] = "≈" + duration(stage_left + PLAN.work_after_current() / work_per_second)
        return out


def _where(trainer: L.Trainer, stage: str) -> str:
    label = PLAN.label() if PLAN is not None and stage in PLAN.stages else stage
    return f"{label} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"


def _batch_figures(trainer: L.Trainer, outputs: Any, images: int, seconds: float) -> str:
    """The loss the stage logs (an SSL method's own loss, without the online
    probe's that the step also returns; Lightning updates it just after this
    hook, so it is the previous step's), the learning rate and the images per
    second since the last line."""
    loss = trainer.callback_metrics.get("train/loss_step")
    if loss is None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    parts = [f"loss {float(loss):.4g}"] if isinstance(loss, torch.Tensor) else []
    if trainer.optimizers:
        parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.4g}")
    if seconds > 0:
        parts.append(f"{images / seconds:,.0f} images/s")
    return ", ".join(parts)


class PlainProgress(Callback):
    """Plain progress lines (no terminal control codes) for CI, files and
    clusters: every `every_steps` batches or `every_seconds` seconds, and at
    each epoch's end."""

    def __init__(self, stage: str, work: float, every_steps: int, every_seconds: float) -> None:
        self.stage, self.clock = stage, StageClock(stage, work)
        self.every_steps, self.every_seconds = max(1, every_steps), every_seconds
        self._epoch_start = self._last_line = 0.0
        self._since_line = self._images_since_line = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_line = time.monotonic()
        self._since_line = self._images_since_line = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed mid-epoch, Lightning calls no on_train_epoch_start.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.clock.batch_done()
        self._since_line += 1
        labels = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        self._images_since_line += len(labels) if isinstance(labels, torch.Tensor) else 0
        now = time.monotonic()
        if self._since_line < self.every_steps and now - self._last_line < self.every_seconds:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's line follows
        figures = _batch_figures(trainer, outputs, self._images_since_line, now - self._last_line)
        self._since_line, self._images_since_line, self._last_line = 0, 0, now
        etas = self.clock.etas(trainer)
        log.info("%s batch %d/%s: %s%s", _where(trainer, self.stage), batch_idx + 1, trainer.num_training_batches,
                 figures, "".join(f", {k} {v}" for k, v in etas.items()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.monotonic() - self._epoch_start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_epoch") or "/" in k}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        etas = self.clock.etas(trainer)
        log.info("%s done (%.1f s): %s%s", _where(trainer, self.stage), seconds, shown,
                 "".join(f", {k} {v}" for k, v in etas.items()))


class StageProgressBar(RichProgressBar):
    """Lightning's rich bar with the stage, 1-based epochs and the ETAs."""

    def __init__(self, stage: str, work: float) -> None:
        super().__init__(leave=True)
        self.stage, self.clock = stage, StageClock(stage, work)

    def _get_train_description(self, current_epoch: int) -> str:
        return _where(self.trainer, self.stage)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.clock.batch_done()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return {**items, **self.clock.etas(trainer)}


def banner_lines(cfg: DictConfig, facts: Dict[str, Any], stages: List[str], run_dir: str,
                 resume_command: Optional[str]) -> List[str]:
    """The start banner: what runs, on what, where, and how to resume it."""
    hardware = facts["hardware"]
    device = hardware.get("gpu") or f"{hardware['cpu']} CPU ({hardware['cpu_threads']} threads)"
    lines = [
        f"ssl-runner: {facts['method']} on {facts['data']} ({facts['train_images']:,} training / "
        f"{facts['test_images']:,} test images, {facts['image_size']} px), backbone {facts['backbone']}",
        f"  {facts['epochs']} epochs, global batch {facts['global_batch_size']} "
        f"({facts['batch_size']} per device x {facts['processes']} process(es)), {hardware['accelerator']}: "
        f"{device}, precision {cfg.trainer.precision}",
        "  stages: " + " -> ".join(f"{i + 1} {s}" for i, s in enumerate(stages)),
        f"  run folder: {run_dir}",
    ]
    if resume_command:
        lines.append(f"  to resume this run if it stops: {resume_command}")
    return lines


__all__ = ["PlainProgress", "RunPlan", "StageProgressBar", "banner_lines", "set_plan", "stage_work"]
