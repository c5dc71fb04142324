"""Stopping safely: Ctrl-C (SIGINT) and SIGTERM (`kill`, SLURM's preemption)
end a run with its state saved and the command that resumes it.

While a stage trains, a signal is a request: at the end of the current batch
every rank agrees on it (one tiny all-reduce per batch in a multi-process
run), the stage's `last.ckpt` is written with the exact position (resumed,
the run gives the uninterrupted figures), and `RunStopped` ends the run; at
an epoch's last batch the epoch ends first (its validation, monitors, logged
means and its own `last.ckpt`) and the run stops before the next one. The
manifest records the stage as interrupted, and the CLI prints one line with
the resume command and exits 130 (SIGINT) or 143 (SIGTERM), as shells do.
Outside training (decoding images, kNN, between stages) there is nothing to
save beyond the finished stages, so the run stops at once; so does a second
signal.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """The run was stopped by a signal; `where` says what was saved."""

    status = "interrupted"

    def __init__(self, signum: Union[int, str], where: str = "") -> None:
        if isinstance(signum, str):
            # Re-created from its message by a library that wraps what is raised
            # inside it (OmegaConf's format_and_raise, when the signal lands in a
            # config access): the signal is the one received, the message its first line.
            message, signum = signum.splitlines()[0], _Requests.signum or signal.SIGTERM
        else:
            message = f"stopped by {signal.Signals(signum).name}" + (f" {where}" if where else "")
        self.signum = int(signum)
        self.where = where
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Requests:
    """The signal received (None: none yet) and how many training loops will
    act on it at their next batch end (0: act at once)."""

    signum: Optional[int] = None
    deferring = 0


def _on_signal(signum: int, frame: Any) -> None:
    first = _Requests.signum is None
    _Requests.signum = _Requests.signum or signum
    if _Requests.deferring and first:
        log.warning("received %s: stopping after the current batch, once its checkpoint is saved (send it again "
                    "to stop at once, without saving)", signal.Signals(signum).name)
        return
    raise RunStopped(signum)


def install_stop_handlers() -> None:
    """Route SIGINT and SIGTERM to `_on_signal` (each process, at job start)."""
    _Requests.signum, _Requests.deferring = None, 0
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)


def ignore_further_signals() -> None:
    """Once a process is ending because of a stop, a later signal (SLURM's to
    every task, the first rank's to its workers) must not interrupt the end."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def raise_if_stop_requested(where: str = "") -> None:
    """Between steps outside training: stop now if a signal came."""
    if _Requests.signum is not None:
        raise RunStopped(_Requests.signum, where)


def _agreed_signal(trainer: L.Trainer) -> int:
    """The signal any rank received (0: none), the same on every rank."""
    signum = _Requests.signum or 0
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        flag = torch.tensor([signum], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        signum = int(flag.item())
    return signum


def mid_epoch_checkpoint_allowed(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether a checkpoint may be saved after the batch just done: it must end
    an optimizer step (with gradient accumulation a checkpoint in between
    would lose the accumulated gradients) and not be the epoch's last batch.
    Resumed from there, Lightning counts the epoch as done but skips its end
    (validation, the epoch hooks: monitors, figures, its checkpoint) and the
    next epoch's start (BatchSeeds' seed of its first batch), so the resumed
    run would train differently; the epoch's own end comes moments later."""
    epoch_loop = trainer.fit_loop.epoch_loop
    last_batch = batch_idx + 1 >= trainer.num_training_batches or epoch_loop.batch_progress.is_last_batch
    return (batch_idx + 1) % max(1, trainer.accumulate_grad_batches) == 0 and not last_batch


class StopOnSignal(Callback):
    """Acts on a stop request at a batch's end (not an epoch's last): saves
    `checkpoint` (every rank takes part, rank 0 writes) and raises
    `RunStopped`; otherwise once the epoch has ended, at the next epoch's
    start or at the end of training, where the epoch's own checkpoint holds
    the position. Lightning's own SIGTERM handling is switched off (it would
    end the run with exit status 0)."""

    def __init__(self, stage: str, checkpoint: Optional[Path]) -> None:
        self.stage, self.checkpoint = stage, checkpoint
        self._deferring = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        trainer._signal_connector.register_signal_handlers = lambda: None  # type: ignore[method-assign]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._deferring = True
        _Requests.deferring += 1

    def _release(self) -> None:
        if self._deferring:
            self._deferring = False
            _Requests.deferring = max(0, _Requests.deferring - 1)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()  # Lightning calls no teardown hook after an exception

    def _stop(self, trainer: L.Trainer, signum: int, where: str) -> None:
        saved = ""
        if self.checkpoint is not None:
            trainer.save_checkpoint(self.checkpoint)
            saved = f"; saved {self.checkpoint.parent.parent.name}/checkpoints/{self.checkpoint.name} there"
        raise RunStopped(signum, f"in {self.stage} at {where}{saved}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not mid_epoch_checkpoint_allowed(trainer, batch_idx):
            return
        signum = _agreed_signal(trainer)
        if signum:
            # Log this batch's step figures as Lightning would right after this
            # hook (the resumed run starts with the next batch).
            trainer._logger_connector.on_batch_end()
            trainer._logger_connector.update_train_step_metrics()
            self._stop(trainer, signum, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}, batch "
                                        f"{batch_idx + 1}/{trainer.num_training_batches}")

    def _stop_between_epochs(self, trainer: L.Trainer) -> None:
        """Stop, without saving, once the epochs so far have ended as in an
        uninterrupted run: their validation, monitors and logged means done,
        `last.ckpt` saved at the last one's end (ModelCheckpoint's turn comes
        after every other epoch-end hook, so it is not done here)."""
        signum = _agreed_signal(trainer)
        if not signum:
            return
        epochs_done = trainer.current_epoch
        if epochs_done == 0:
            raise RunStopped(signum, f"in {self.stage} before its first batch")
        saved = ""
        if self.checkpoint is not None:
            saved = f"; saved {self.checkpoint.parent.parent.name}/checkpoints/{self.checkpoint.name} there"
        raise RunStopped(signum, f"in {self.stage} at the end of epoch {epochs_done}/{trainer.max_epochs}{saved}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_between_epochs(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_between_epochs(trainer)


class TimedCheckpoint(ModelCheckpoint):
    """Lightning's time-based checkpoint (`train_time_interval`), held back
    to the next optimizer step when gradients are being accumulated, and
    never at an epoch's last batch (mid_epoch_checkpoint_allowed)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if mid_epoch_checkpoint_allowed(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
