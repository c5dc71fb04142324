"""A training stage's checkpoints: written atomically with the previous one
kept beside it, read with `weights_only=True`, and the position (epoch and
batch) a stage resumes from.

`last.ckpt` is replaced at each epoch's end, every
`trainer.checkpoint_every_minutes` of training (mid-epoch) and when a run is
stopped by a signal. Before it is replaced, the file it replaces becomes
`previous.ckpt`, so a `last.ckpt` damaged on disk falls back to it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ssl_runner.safe_io import atomic_torch_save, atomic_write_bytes, remove_orphan_temporaries

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "previous.ckpt"
# The state_key under which callbacks.EpochRecord's state sits in a checkpoint.
POSITION_KEY = "EpochRecord"


def keep_previous(path: Path) -> None:
    """Make the checkpoint at `path` the folder's `previous.ckpt`, without a
    moment in which `path` is missing (a hard link, renamed into place)."""
    previous = path.with_name(PREVIOUS_CHECKPOINT)
    staged = path.with_name(PREVIOUS_CHECKPOINT + ".tmp-link")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
        os.replace(staged, previous)
    except OSError as err:  # a file system without hard links: keep only the newest
        log.debug("could not keep %s as %s (%s)", path, previous, err)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside `last.ckpt` and renamed
    (Lightning's own writer stages them in $TMPDIR: a kill leaves an orphan
    there, and on another file system the final move is a copy), the file
    replaced kept as `previous.ckpt`, and read with `weights_only=True`, so a
    planted pickle never runs."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            keep_previous(path)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None
                        ) -> Dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


@dataclass(frozen=True)
class Position:
    """Where a checkpoint left its stage: `epoch` (0-based) and the batches of
    it done; `epoch_finished` when it was saved at the epoch's end."""

    epoch: int
    batches_done: int
    epoch_finished: bool

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1 if self.epoch_finished else self.epoch

    def describe(self, batches_per_epoch: Optional[int] = None) -> str:
        if self.epoch_finished:
            return f"the end of epoch {self.epoch + 1}"
        of = f"/{batches_per_epoch}" if batches_per_epoch else ""
        return f"epoch {self.epoch + 1}, batch {self.batches_done}{of}"


def checkpoint_position(data: Dict[str, Any]) -> Position:
    """The position a loaded checkpoint holds (one without EpochRecord's record:
    Lightning's epoch, taken as finished)."""
    record = data.get("callbacks", {}).get(POSITION_KEY, {})
    if "epoch" in record:
        return Position(int(record["epoch"]), int(record["batches_done"]), bool(record["epoch_finished"]))
    return Position(int(data["epoch"]), 0, True)


def read_position(path: str | Path) -> Position:
    return checkpoint_position(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


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


def read_metrics(path: Path) -> tuple[List[str], List[Dict[str, str]]]:
    """A stage's metrics.csv: its columns and rows (none when it is missing)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def write_metrics(path: Path, keys: Sequence[str], rows: Sequence[Dict[str, Any]]) -> None:
    """metrics.csv, whole and atomically (a later step reads it)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(keys), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def keep_metrics_through(path: Path, data: Dict[str, Any]) -> None:
    """Keep the metrics rows the checkpoint `data` covers: every epoch before
    its own and, of its epoch, the rows logged before it was saved (a killed
    attempt's later rows would appear twice).

    Lightning logs a step's row just after the checkpoint of that step is
    written: a kill in that instant (milliseconds) loses that one row, though
    not the figures in summary.json, which the checkpoint holds (EpochRecord)."""
    position = checkpoint_position(data)
    logged_steps = data.get("callbacks", {}).get(POSITION_KEY, {}).get("logged_steps")
    keys, rows = read_metrics(path)

    def covered(row: Dict[str, str]) -> bool:
        if not row.get("epoch"):
            return False
        epoch = int(float(row["epoch"]))
        if epoch != position.epoch or position.epoch_finished or logged_steps is None:
            return epoch <= position.epoch
        return bool(row.get("step")) and int(float(row["step"])) <= int(logged_steps)

    kept = [row for row in rows if covered(row)]
    if len(kept) != len(rows):
        write_metrics(path, keys, kept)


def prepare_stage_folder(run_dir: Path, stage: str) -> None:
    """Get `run_dir/stage` ready for an attempt (main process only): remove
    the temporary files of killed writers; take the newest readable
    checkpoint (`last.ckpt`, else `previous.ckpt`, which then becomes
    `last.ckpt`; an unreadable one is set aside as `*.unreadable`) and keep
    the metrics rows it covers; with none, the stage starts afresh, without
    its old metrics.csv."""
    stage_dir = run_dir / stage
    ckpt_dir = stage_dir / "checkpoints"
    for folder in (stage_dir, ckpt_dir):
        remove_orphan_temporaries(folder)
    last, previous = ckpt_dir / LAST_CHECKPOINT, ckpt_dir / PREVIOUS_CHECKPOINT
    data = _readable_checkpoint(last) if last.is_file() else None
    if last.is_file() and data is None:
        moved = _set_aside(last)
        fallback = _readable_checkpoint(previous) if previous.is_file() else None
        if fallback is not None:
            os.replace(previous, last)
            data = fallback
            log.warning("%s: its last checkpoint could not be read; moved it to %s and resuming from the previous "
                        "one, saved at %s", stage, moved, checkpoint_position(data).describe())
        else:
            log.warning("%s: its last checkpoint could not be read; moved it to %s and starting the stage from "
                        "scratch (there is no earlier readable state to resume from)", stage, moved)
    if data is None:
        (stage_dir / "metrics.csv").unlink(missing_ok=True)
    else:
        keep_metrics_through(stage_dir / "metrics.csv", data)


def resume_path(run_dir: Path, stage: str) -> Optional[str]:
    """The last checkpoint an interrupted stage left, if any."""
    path = run_dir / stage / "checkpoints" / LAST_CHECKPOINT
    return str(path) if path.is_file() else None
