"""What every benchmark script shares, so that a figure holds on any machine:
the machine's line (CPU model, cores, torch and its threads), measurements
of both sides interleaved (ours, peer, ours, peer, ...), each in a fresh
process where process-wide state matters, and medians with their spread.

A noisy neighbour or a change of clock speed then lands on both sides alike,
and one run no longer decides a ratio. Used by bench_views.py, bench_train.py
and bench_imagefolder.py.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch

from ssl_runner.run_dir import cpu_model


def machine_line() -> str:
    """CPU model, cores this process may use, torch and its thread settings."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = f"{torch.get_num_threads()} torch threads"
    if os.environ.get("OMP_NUM_THREADS"):
        threads += f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    return (f"machine: {cpu_model()}, {cores} cores available, {threads}, torch {torch.__version__}, "
            f"python {platform.python_version()}")


def rate(fn: Callable[[], object], items: int, min_seconds: float = 3.0) -> float:
    """Items per second of fn() (which handles `items` items): one warm-up
    call, then calls until `min_seconds` have passed."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * items / elapsed


def interleaved(sides: Dict[str, Callable[[], float]], repeats: int) -> Dict[str, List[float]]:
    """Each side measured `repeats` times, in turns: a, b, a, b, ..."""
    results: Dict[str, List[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, measure in sides.items():
            results[name].append(measure())
    return results


def in_fresh_process(script: str, arguments: Sequence[str], key: str = "images_per_second") -> Callable[[], float]:
    """A measurement that runs `script` with `arguments` in a new Python process
    and reads `key` from the JSON on its last line of output."""
    def measure() -> float:
        out = subprocess.run([sys.executable, script, *arguments], check=True, capture_output=True, text=True).stdout
        return float(json.loads(out.strip().splitlines()[-1])[key])
    return measure


def spread(values: Sequence[float]) -> str:
    """Median, then min-max and the relative spread (max - min) / median."""
    median = statistics.median(values)
    return (f"median {median:,.1f}, range {min(values):,.1f}-{max(values):,.1f} "
            f"(±{50 * (max(values) - min(values)) / median:.0f} %), n {len(values)}")


def report(results: Dict[str, List[float]], ours: str, peer: str, unit: str = "images/s") -> float:
    """One line per side (median, range) and the ratio of medians, ours / peer;
    returns the ratio."""
    width = max(len(name) for name in results)
    for name, values in results.items():
        print(f"  {name:<{width}}  {spread(values)} {unit}")
    ratio = statistics.median(results[ours]) / statistics.median(results[peer])
    ratios = [a / b for a, b in zip(results[ours], results[peer])]
    print(f"  ratio of medians {ours} / {peer}: {ratio:.2f} (pairwise ratios {min(ratios):.2f}-{max(ratios):.2f})")
    return ratio
