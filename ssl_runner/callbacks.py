"""The Lightning callbacks every training stage gets (training.build_trainer):

- `BatchSeeds`: every random number a batch draws in the training process
  (views made on the device, dropout, a method's random choices) comes from
  (seed, stage, rank, epoch, batch), and with the loaders' EpochShuffle
  sampler (data/loaders.py) the order and the workers' views too, so a stage
  resumed from any checkpoint, mid-epoch included, replays the rest exactly
  as the uninterrupted run did;
- `StopOnNonFinite`: a NaN or infinite loss, gradient or weight stops the
  stage at once, before the bad step is applied or saved (on a GPU within
  `trainer.log_every_n_steps` steps, never saved);
- `EpochRecord`: the stage's position and figures, kept in the checkpoint,
  so that a resumed stage reports what the uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from ssl_runner.errors import TrainingDiverged
from ssl_runner.seeding import epoch_seed, seed_all


class BatchSeeds(Callback):
    """Reseeds every generator before each training batch from (seed, stage,
    rank, epoch, batch): the views made on the device, dropout, a method's
    random choices. Ranks differ so that they draw different views. Seeding
    per batch, not per epoch, lets a stage resumed from a mid-epoch
    checkpoint draw what the uninterrupted run drew. (The batch is seeded
    before its transfer, where views are made: at the epoch's start for its
    first batch, after each batch for the next.) The order of the data and
    the workers' views do not come from here: the training loaders'
    EpochShuffle sampler draws them from (seed, rank, epoch) itself."""

    def __init__(self, seed: int, stage: str) -> None:
        self.seed, self.stage = seed, stage

    def _seed_batch(self, trainer: L.Trainer, batch: int) -> None:
        seed_all(epoch_seed(self.seed, f"{self.stage} batch {batch}", trainer.global_rank, trainer.current_epoch))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed mid-epoch, Lightning skips on_train_epoch_start: the first batch
        # is the one after those the checkpoint holds.
        record = next(c for c in trainer.callbacks if isinstance(c, EpochRecord))
        if record.resumed_mid_epoch(trainer):
            self._seed_batch(trainer, record.batches_done)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seed_batch(trainer, 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._seed_batch(trainer, batch_idx + 1)


def _eval_settings_key(stage: str) -> str:
    """The eval.* section whose settings train `stage` (its random-init twin's too)."""
    for prefix, key in (("probe_", "probe"), ("nonlinear", "nonlinear"), ("finetune", "finetune"), ("semi_", "semi")):
        if stage.startswith(prefix):
            return key
    return "linear"  # linear, linear_random_init, linear_concat


def responsible_settings(cfg: DictConfig, stage: str) -> str:
    """The settings that most often make `stage` diverge, as key=value."""
    t = cfg.trainer
    common = f"trainer.precision={t.precision}, trainer.gradient_clip_val={t.gradient_clip_val}"
    if stage == "pretrain":
        o, s = cfg.optimizer, cfg.scheduler
        return (f"optimizer.lr={o.lr} (at reference batch {o.reference_batch}, {o.lr_scaling} scaling), "
                f"optimizer.name={o.name}, optimizer.weight_decay={o.weight_decay}, scheduler.name={s.name} "
                f"with scheduler.warmup_epochs={s.warmup_epochs}, {common}")
    key = _eval_settings_key(stage)
    e = cfg.eval[key]
    return f"eval.{key}.lr={e.lr}, eval.{key}.weight_decay={e.weight_decay}, {common}"


def defers_checks(device: torch.device) -> bool:
    """Whether a check on `device` is read later (StopOnNonFinite): where the
    host would otherwise wait for the device, a GPU's."""
    return device.type == "cuda"


class StopOnNonFinite(Callback):
    """Stops the stage with `TrainingDiverged` when its loss, its gradients or
    its weights stop being finite.

    Gradients are checked before each optimizer step, after DDP has averaged
    them, so every rank stops at the same step and the bad update is never
    applied. (Under fp16 loss scaling an infinite gradient only makes the
    scaler skip the step, so there the loss and the weights are checked.)
    Weights and buffers are checked at the end of each epoch, before the
    checkpoint is written, so `last.ckpt` always holds a finite state.

    On a GPU, reading a check's answer each step would make the host wait for
    the device twice a step (the GPU then idles while the next step is being
    queued). There the checks stay on the device, folded into one flag, read
    every `trainer.log_every_n_steps` steps and before any checkpoint is
    written: a divergence stops the stage within that many steps (the bad
    updates of those steps are applied, never saved)."""

    def __init__(self, cfg: DictConfig, stage: str) -> None:
        self.cfg, self.stage = cfg, stage
        self._unset_buffers: set = set()
        # On a GPU: {what: all finite since the last read}, device tensors.
        self._pending: Dict[str, torch.Tensor] = {}
        self._pending_since = 0

    def _diverged(self, trainer: L.Trainer, what: str) -> TrainingDiverged:
        batch = trainer.fit_loop.epoch_loop.batch_idx + 1
        where = (f"at epoch {trainer.current_epoch + 1}, batch {batch} (optimizer step {trainer.global_step})"
                 if not self._pending else f"between optimizer steps {self._pending_since} and {trainer.global_step} "
                 f"(epoch {trainer.current_epoch + 1}; read every {trainer.log_every_n_steps} steps on a GPU)")
        return TrainingDiverged(
            f"the {self.stage} stage diverged: {what} {where}. The settings most likely responsible: "
            f"{responsible_settings(self.cfg, self.stage)}. Lower the learning rate, lengthen the warm-up or "
            "clip gradients, in a new run folder (hydra.run.dir=...; this folder keeps its config). The stage "
            f"stopped at once: {self.stage}/checkpoints/last.ckpt, if there is one, holds the last finite "
            "state, from the end of the last complete epoch."
        )

    def _check(self, trainer: L.Trainer, finite: torch.Tensor, what: str) -> None:
        """Stop now if `finite` is false; on a GPU, fold it into the flag read later."""
        if not defers_checks(finite.device):
            if not bool(finite):
                raise self._diverged(trainer, what)
            return
        if not self._pending:
            self._pending_since = trainer.global_step
        self._pending[what] = finite if what not in self._pending else self._pending[what] & finite
        if trainer.global_step - self._pending_since >= trainer.log_every_n_steps:
            self.read_pending(trainer)

    def read_pending(self, trainer: L.Trainer) -> None:
        """The GPU's folded checks, read now (one wait for the device)."""
        for what, finite in self._pending.items():
            if not bool(finite):
                error = self._diverged(trainer, what)
                self._pending = {}
                raise error
        self._pending = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self._check(trainer, torch.stack(torch._foreach_norm(grads)).isfinite().all(), "a gradient is not finite")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            if defers_checks(loss.device):
                self._check(trainer, torch.isfinite(loss).all(), "the loss is not finite")
            elif not bool(torch.isfinite(loss).all()):
                raise self._diverged(trainer, f"the loss is {float(loss.float().mean())}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: Dict[str, Any]) -> None:
        # Before the file is written: a checkpoint never holds a state after a non-finite step.
        self.read_pending(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A buffer may start out non-finite on purpose (NPID's NaN "not yet
        # estimated" normaliser); only buffers finite at the start must stay so.
        self._unset_buffers = {name for name, b in pl_module.named_buffers()
                               if b.is_floating_point() and not bool(torch.isfinite(b).all())}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read_pending(trainer)
        buffers = [(name, b) for name, b in pl_module.named_buffers() if name not in self._unset_buffers]
        for name, tensor in [*pl_module.named_parameters(), *buffers]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
                raise self._diverged(trainer, f"the weights '{name}' are not finite")


class EpochRecord(Callback):
    """Where the stage is and what it has measured, saved in and restored from
    every checkpoint (checkpoints.Position reads it):

    - `metrics`: the figures at the last epoch's end (logged epoch means and
      monitors), so a resumed stage reports what the uninterrupted one would,
      even when nothing was left to train;
    - `seconds`: training time summed over every attempt;
    - `epoch`, `batches_done`, `epoch_finished`: the position;
    - mid-epoch, the running sums of the epoch means Lightning accumulates
      (they are not in its checkpoints), one set per rank: added back after
      the resumed epoch's first batch, so its means cover every batch, in
      the same order of additions as the uninterrupted run (a + b == b + a)."""

    def __init__(self) -> None:
        self.metrics: Dict[str, float] = {}
        self.seconds = 0.0
        self.epoch, self.batches_done, self.epoch_finished = 0, 0, False
        self._epoch_started: Optional[float] = None
        self._trainer: Optional[L.Trainer] = None
        self._restored_sums: Optional[Dict[str, Dict[str, torch.Tensor]]] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def resumed_mid_epoch(self, trainer: L.Trainer) -> bool:
        """Whether this fit resumes from a mid-epoch checkpoint (Lightning then
        continues the epoch without calling on_train_epoch_start)."""
        return self.epoch == trainer.current_epoch and not self.epoch_finished and self.batches_done > 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.resumed_mid_epoch(trainer):
            self._epoch_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        self._restored_sums = None
        self.epoch, self.batches_done, self.epoch_finished = trainer.current_epoch, 0, False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches_done = batch_idx + 1
        if self._restored_sums is not None:
            for key, metric in _epoch_means(trainer).items():
                saved = self._restored_sums.get(key)
                if saved is not None:
                    metric.value = metric.value + saved["value"].to(metric.value)
                    metric.cumulated_batch_size = (metric.cumulated_batch_size
                                                   + saved["count"].to(metric.cumulated_batch_size))
            self._restored_sums = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                        if not k.endswith("_step")}
        self.epoch_finished = True
        if self._epoch_started is not None:
            self.seconds += time.perf_counter() - self._epoch_started
            self._epoch_started = None

    def state_dict(self) -> Dict[str, Any]:
        seconds = self.seconds
        if self._epoch_started is not None:  # mid-epoch: the epoch so far counts too
            seconds += time.perf_counter() - self._epoch_started
        state: Dict[str, Any] = {"metrics": dict(self.metrics), "seconds": seconds, "epoch": self.epoch,
                                 "batches_done": self.batches_done, "epoch_finished": self.epoch_finished}
        trainer = self._trainer
        if trainer is not None and not self.epoch_finished and trainer.training:
            state["logged_steps"] = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
            sums = {key: {"value": m.value.detach().cpu().clone(), "count": m.cumulated_batch_size.detach().cpu()
                          .clone()} for key, m in _epoch_means(trainer).items()}
            # Saved by rank 0 alone, so it carries every rank's sums (every rank saves together).
            state["epoch_sums"] = _gather_objects(sums)
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.metrics = dict(state_dict.get("metrics", {}))
        self.seconds = float(state_dict.get("seconds", 0.0))
        self.epoch = int(state_dict.get("epoch", 0))
        self.batches_done = int(state_dict.get("batches_done", 0))
        self.epoch_finished = bool(state_dict.get("epoch_finished", True))
        per_rank = state_dict.get("epoch_sums")
        self._restored_sums = None
        if per_rank and not self.epoch_finished:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._restored_sums = per_rank[rank]


def _epoch_means(trainer: L.Trainer) -> Dict[str, Any]:
    """The metrics Lightning is averaging over the current training epoch
    (mean-reduced tensors logged with on_epoch=True), by key."""
    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

    results = trainer.fit_loop.epoch_loop._results
    return {key: metric for key, metric in results.items()
            if isinstance(metric, _ResultMetric) and metric.meta.on_epoch and metric.is_tensor
            and metric.meta.is_mean_reduction}


def _gather_objects(obj: Any) -> List[Any]:
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
