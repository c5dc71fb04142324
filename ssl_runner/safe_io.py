"""Writing the run folder safely: every file a later step reads is written to a
temporary file in the same folder and renamed over the old one, so a kill or a
full disk never leaves half a file; JSON is strict (no NaN or Infinity); a
failed write becomes one paragraph that names the path.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Optional

# Temporary files are named `.<name>.tmp.<pid>` beside their target: a rename
# within one folder is atomic, and a kill leaves the orphan where the next
# attempt (holding the run folder's lock) finds and removes it.
TMP_MARKER = ".tmp."

# Errors a user fixes by freeing space or choosing a writable folder.
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def atomic_write_bytes(path: Path | str, data: bytes, fsync: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same folder; on
    any error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:  # checkpoints: the rename must not outrun the data on a crash
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # name the file meant, not its temporary
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise


def write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """`torch.save` atomically. Serialised in memory first: torch's own file
    writer reports a full disk as a RuntimeError, Python's file API as OSError."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), fsync=True)


def finite_or_none(tree: Any) -> Any:
    """`tree` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(tree, float):
        return tree if math.isfinite(tree) else None
    if isinstance(tree, dict):
        return {k: finite_or_none(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite_or_none(v) for v in tree]
    return tree


def write_json(path: Path | str, data: Dict[str, Any]) -> None:
    """Strict JSON (a diverged figure is null, never a bare NaN), atomically."""
    text = json.dumps(finite_or_none(data), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def remove_orphan_temporaries(folder: Path) -> None:
    """Delete the temporary files that killed writers left in `folder`. Only
    the holder of the run folder's lock may call this."""
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(".") and TMP_MARKER in entry.name and entry.is_file():
                entry.unlink(missing_ok=True)


def write_failure(err: BaseException) -> Optional[OSError]:
    """The OSError behind `err` (itself or a cause) when it is a write that a
    full disk, a read-only file system or missing permissions refused."""
    seen = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in WRITE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def write_failure_paragraph(err: OSError, width: int = 88) -> str:
    where = err.filename or "the run folder"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        problem, fix = "the disk (or quota) is full", "Free space there"
    elif err.errno == errno.EROFS:
        problem, fix = "the file system is read-only", "Make it writable"
    else:
        problem, fix = "permission was denied", "Make it writable"
    return textwrap.fill(
        f"error: could not write {where}: {problem} ({os.strerror(err.errno)}). {fix} and rerun the same "
        "command: stages that finished are kept, an interrupted one resumes from its last complete "
        "checkpoint, and no file was left half-written. Or run in another folder with hydra.run.dir=...",
        width=width, break_long_words=False, break_on_hyphens=False)


class RunLogFileHandler(logging.FileHandler):
    """The run's log file (conf/hydra/job_logging), opened at its first record
    rather than when Hydra sets up logging; a record it cannot write (a full
    disk) is dropped with one warning, not a traceback per log line."""

    def __init__(self, filename: str, mode: str = "a", encoding: Optional[str] = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self._warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: could not write the log file {self.baseFilename} ({sys.exc_info()[1]}); "
                  "its lines go to the console only from here on", file=sys.stderr)
