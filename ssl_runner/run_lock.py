"""One process per run folder: rank 0 holds an exclusive lock on `<run>/.lock`
for the run's life.

Two runs in one folder would train into the same checkpoints and interleave
their metrics. The lock is an `flock`, which the kernel releases when its
holder dies, so the lock of a killed run is never stale: the next run takes
it over, and says whose it was (the file keeps the holder's pid and host).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Optional

from ssl_runner.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderLock:
    """The exclusive lock of one run folder (`acquire` raises `UserError`
    naming the holder when another process has it)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._handle: Optional[IO[str]] = None

    def acquire(self) -> "RunFolderLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(handle)
            handle.close()
            raise UserError(
                f"the run folder {self.run_dir} is in use by another ssl_runner run ({holder or 'holder unknown'}). "
                "Two runs in one folder would write the same checkpoints and metrics, so this one stopped "
                "before touching anything. Wait for that run to end (or stop it), then rerun this command to "
                "resume there, or choose another folder with hydra.run.dir=..."
            ) from None
        previous = self._holder(handle)
        if previous:  # a finished run empties the file: this one ended without releasing it
            log.warning("run folder %s: took over the lock of a run that ended without releasing it (%s)",
                        self.run_dir, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        self._handle = handle
        return self

    @staticmethod
    def _holder(handle: IO[str]) -> str:
        handle.seek(0)
        return handle.read().strip()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
