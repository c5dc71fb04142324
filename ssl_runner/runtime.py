"""Process-wide settings that make CPU work faster; applied once at start-up."""

from __future__ import annotations

import ctypes
import os
import sys
import time

# When this module was first imported (the package imports it first thing).
IMPORTED_AT = time.time()

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Keep large freed blocks in the heap instead of handing them back to the OS.

    glibc serves blocks above its mmap threshold (128 KiB to 32 MiB, adapting)
    with fresh mmaps and unmaps them on free, so every large tensor (a batch
    of images, an activation) is page-faulted in anew, a few milliseconds per
    6 MB. The views and the training step allocate such tensors every step;
    with the blocks kept, they are reused (measured in docs/performance.md).
    The cost: the process keeps its peak heap. Returns whether it applied
    (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def process_age() -> float:
    """Seconds since this process started (from /proc where there is one, else
    since ssl_runner was imported)."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - IMPORTED_AT


_jobs_started = 0
_later_job_started_at: float | None = None


def start_job() -> None:
    """Mark the start of a Hydra job. The first job of a process counts from
    the process's start (imports and start-up are part of what a user waits
    for); later jobs of a multirun, from now."""
    global _jobs_started, _later_job_started_at
    _jobs_started += 1
    _later_job_started_at = None if _jobs_started == 1 else time.monotonic()


def job_age() -> float:
    """Seconds the current job has taken so far (see `start_job`)."""
    return process_age() if _later_job_started_at is None else time.monotonic() - _later_job_started_at
