"""The Lightning callbacks every training stage gets (training.build_trainer):

- `EpochSeeds`: every random number an epoch draws in the training process
  (views made on the device, dropout, a method's random choices) comes from
  (seed, stage, rank, epoch), and with the loaders' EpochShuffle sampler
  (data/loaders.py) the order and the workers' views too, so a stage resumed
  from its epoch-k checkpoint replays epoch k+1 exactly as the uninterrupted
  run did;
- `StopOnNonFinite`: a NaN or infinite loss, gradient or weight stops the
  stage at once, before the bad step is applied or saved;
- `EpochRecord`: the stage's figures at the end of each epoch, kept in the
  checkpoint, so that a resumed stage reports what the uninterrupted one
  would, even when nothing was left to train.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from ssl_runner.errors import TrainingDiverged
from ssl_runner.seeding import epoch_seed, seed_all


class EpochSeeds(Callback):
    """Reseeds every generator at the start of each epoch from (seed, stage,
    rank, epoch): the views made on the device, dropout, a method's random
    choices. Ranks differ so that they draw different views. The order of the
    data and the workers' seeds do not come from here (Lightning may make an
    epoch's DataLoader iterator before this hook): the training loaders'
    EpochShuffle sampler draws them from (seed, rank, epoch) itself."""

    def __init__(self, seed: int, stage: str) -> None:
        self.seed, self.stage = seed, stage

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_all(epoch_seed(self.seed, self.stage, trainer.global_rank, trainer.current_epoch))


def _eval_settings_key(stage: str) -> str:
    """The eval.* section whose settings train `stage` (its random-init twin's too)."""
    for prefix, key in (("probe_", "probe"), ("nonlinear", "nonlinear"), ("finetune", "finetune")):
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


class StopOnNonFinite(Callback):
    """Stops the stage with `TrainingDiverged` when its loss, its gradients or
    its weights stop being finite.

    Gradients are checked before each optimizer step, after DDP has averaged
    them, so every rank stops at the same step and the bad update is never
    applied. (Under fp16 loss scaling an infinite gradient only makes the
    scaler skip the step, so there the loss and the weights are checked.)
    Weights and buffers are checked at the end of each epoch, before the
    checkpoint is written, so `last.ckpt` always holds a finite state."""

    def __init__(self, cfg: DictConfig, stage: str) -> None:
        self.cfg, self.stage = cfg, stage
        self._unset_buffers: set = set()

    def _diverged(self, trainer: L.Trainer, what: str) -> TrainingDiverged:
        batch = trainer.fit_loop.epoch_loop.batch_idx + 1
        return TrainingDiverged(
            f"the {self.stage} stage diverged: {what} at epoch {trainer.current_epoch + 1}, batch {batch} "
            f"(optimizer step {trainer.global_step}). The settings most likely responsible: "
            f"{responsible_settings(self.cfg, self.stage)}. Lower the learning rate, lengthen the warm-up or "
            "clip gradients, in a new run folder (hydra.run.dir=...; this folder keeps its config). The stage "
            f"stopped at once: {self.stage}/checkpoints/last.ckpt, if there is one, holds the last finite "
            "state, from the end of the last complete epoch."
        )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            raise self._diverged(trainer, "a gradient is not finite")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            raise self._diverged(trainer, f"the loss is {float(loss.detach().float().mean())}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A buffer may start out non-finite on purpose (NPID's NaN "not yet
        # estimated" normaliser); only buffers finite at the start must stay so.
        self._unset_buffers = {name for name, b in pl_module.named_buffers()
                               if b.is_floating_point() and not bool(torch.isfinite(b).all())}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        buffers = [(name, b) for name, b in pl_module.named_buffers() if name not in self._unset_buffers]
        for name, tensor in [*pl_module.named_parameters(), *buffers]:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
                raise self._diverged(trainer, f"the weights '{name}' are not finite")


class EpochRecord(Callback):
    """The stage's figures at each epoch's end (`metrics`: the logged epoch
    means and monitors) and its training seconds summed over every attempt,
    saved in and restored from the checkpoint."""

    def __init__(self) -> None:
        self.metrics: Dict[str, float] = {}
        self.seconds = 0.0
        self._epoch_started: Optional[float] = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
                        if not k.endswith("_step")}
        if self._epoch_started is not None:
            self.seconds += time.perf_counter() - self._epoch_started
            self._epoch_started = None

    def state_dict(self) -> Dict[str, Any]:
        return {"metrics": dict(self.metrics), "seconds": self.seconds}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.metrics = dict(state_dict.get("metrics", {}))
        self.seconds = float(state_dict.get("seconds", 0.0))

