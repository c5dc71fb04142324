"""Shared fixtures: composing configs and finding the real CIFAR-10."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
from hydra import compose, initialize_config_dir

from ssl_runner.__main__ import config_dir
from ssl_runner.validation import validate
from ssl_runner.methods import METHODS
from ssl_runner.stages import stage_names

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n N` (the README's test command), N test files run at once:
    # each test, and every process it starts (OMP_NUM_THREADS), gets one thread,
    # so they do not contend for the cores. On 2 cores this ran a quarter faster
    # than one test at a time with 2 threads (294 s against 394 s for
    # test_lifecycle, test_counting_pirl, test_resume and test_run_safety).
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def compose_config(overrides: List[str] = (), validated: bool = True):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return validate(cfg, METHODS, stage_names()) if validated else cfg


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The real CIFAR-10 image folder from SSL_RUNNER_DATA (../shared/data here and in CI)."""
    data = os.environ.get("SSL_RUNNER_DATA")
    root = (Path(data) / "cifar10" if data else REPO.parent / "shared" / "data" / "cifar10").resolve()
    if not (root / "train").is_dir():
        pytest.fail(f"real CIFAR-10 not found at {root}: set SSL_RUNNER_DATA to the folder holding cifar10/")
    return root


def without_plots(args) -> List[str]:
    """A CLI run's arguments with `pipeline.plots=false` added unless they set
    it: the pictures cost about 4 s a run and change no figure
    (tests/test_plots.py checks both), and the suite starts about sixty runs."""
    args = list(args)
    return args if any(a.startswith("pipeline.plots=") for a in args) else [*args, "pipeline.plots=false"]


def run_method_cli(cifar_root: Path, run_dir: Path, *args: str, extra_env=None):
    """`python -m ssl_runner method=... data=cifar10 experiment=smoke ...` as a user runs it, reading the
    real CIFAR-10; asserts exit 0 and returns the run's summary.json and its pretrain metrics rows."""
    import csv
    import json
    import subprocess
    import sys

    env = {**os.environ, "SSL_RUNNER_DATA": str(cifar_root.parent), "CI": "true", **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-m", "ssl_runner", "data=cifar10", "experiment=smoke", *without_plots(args),
                           f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(summary["stages"][s]["status"] == "done" for s in ("pretrain", "knn", "linear"))
    for stage in ("knn", "linear"):
        assert 15.0 < summary["stages"][stage]["top1"] <= 100.0  # ten classes: chance is 10 %
        assert summary["stages"][stage]["protocol"]["name"] == stage  # every figure says its protocol
    with open(run_dir / "pretrain" / "metrics.csv") as fh:
        return summary, list(csv.DictReader(fh))


def cli_env(cifar_root: Path, extra_env=None) -> dict:
    """The environment of a CLI run as a user starts it: the real CIFAR-10, no
    inherited rank variables, plain progress lines."""
    env = {**os.environ, "SSL_RUNNER_DATA": str(cifar_root.parent), "CI": "true", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return {**env, **(extra_env or {})}


def cli(cifar_root: Path, *args: str, cwd=None, timeout: int = 600, extra_env=None):
    """`python -m ssl_runner ARGS`; returns the CompletedProcess (stdout, stderr as text)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ssl_runner", *without_plots(args)], cwd=cwd,
                          env=cli_env(cifar_root, extra_env),
                          capture_output=True, text=True, timeout=timeout)


def cli_killed_when(cifar_root: Path, run_dir: Path, path: str, *args: str, timeout: float = 600) -> int:
    """Start `python -m ssl_runner ARGS hydra.run.dir=RUN_DIR` and SIGKILL its
    whole process group (every rank) as soon as RUN_DIR/PATH exists: a crash
    at whatever point the run has reached then. Returns the exit status."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ssl_runner", *without_plots(args), f"hydra.run.dir={run_dir}"],
                            env=cli_env(cifar_root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not (run_dir / path).exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


# Per-stage fields that differ between attempts without changing a result.
# ... and the pictures, which are not results (tests/test_plots.py checks they change none).
ATTEMPT_FIELDS = {"seconds", "seconds_to_first_step", "resumed_from", "checkpoint", "encoder_checkpoint", "plots"}


def figures(summary: dict) -> dict:
    """Every stage's results (stages and baselines), without the timings and
    the bookkeeping of which attempt produced them."""
    return {name: {k: v for k, v in record.items() if k not in ATTEMPT_FIELDS}
            for section in ("stages", "baseline") for name, record in summary[section].items()}


def strict_json(path: Path) -> dict:
    """A JSON file read by a strict parser: NaN or Infinity fail the test."""
    import json

    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)
