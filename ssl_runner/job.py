"""One Hydra job: lock the run folder, validate the config, start the ranks,
run the pipeline, and turn whatever stopped it into one paragraph and an exit
status.

A single run exits non-zero on failure: 2 for bad input or an unwritable
folder, 3 when a rank or collective failed, 4 when training diverged. In a
multirun, a job's failure is recorded in its `summary.json` (status, error,
exit status) and the sweep goes on; the sweep's results table lists it, and
the sweep exits non-zero at the end (sweeps/results.SweepResultsTable).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ssl_runner.distributed import collectives, launch
from ssl_runner.errors import EXIT_COLLECTIVE_FAILURE, EXIT_USER_ERROR, UserError
from ssl_runner.run_dir import SUMMARY
from ssl_runner.run_lock import LOCK_FILE, RunFolderLock
from ssl_runner.safe_io import write_failure, write_failure_paragraph, write_json, write_text
from ssl_runner.stopping import RunStopped, ignore_further_signals, install_stop_handlers

log = logging.getLogger("ssl_runner")

# A job's own failure (a bug, not bad input) in a multirun: a traceback's exit status.
EXIT_CRASHED = 1


@dataclass
class Failure:
    """Why a job stopped: its exit status, its status word and the paragraph shown."""

    exit_code: int
    status: str
    message: str


class _WorkerFailed(Exception):
    """A rank this process started exited non-zero (its own messages say why)."""


def _failure(err: BaseException, multirun: bool, run_dir: Path) -> Optional[Failure]:
    """The Failure that `err` stands for, or None for an error to re-raise (a
    bug in a single run gets its traceback)."""
    if isinstance(err, RunStopped):  # said once, by rank 0
        again = (" (an Optuna search resumes, this job included, when its command is rerun; this job alone "
                 "resumes with: " if multirun else ". Resume with: ") + resume_command(run_dir) + (")" if multirun else "")
        message = f"{err}{again}" if collectives.is_main_process() else ""
        return Failure(err.exit_code, err.status, message)
    if isinstance(err, _WorkerFailed):
        return Failure(EXIT_COLLECTIVE_FAILURE, "failed", str(err))
    if isinstance(err, UserError):
        prefix = "" if collectives.is_main_process() else f"(rank {collectives.rank()}) "
        return Failure(err.exit_code, err.status, prefix + err.paragraph())
    disk = write_failure(err)
    if disk is not None:
        return Failure(EXIT_USER_ERROR, "failed", write_failure_paragraph(disk))
    if isinstance(err, Exception) and launch.is_collective_failure(err):
        return Failure(EXIT_COLLECTIVE_FAILURE, "failed", launch.collective_failure_message(err))
    if multirun and isinstance(err, Exception):
        log.error("the job crashed:\n%s", "".join(traceback.format_exception(err)))
        return Failure(EXIT_CRASHED, "failed", f"error: the job crashed ({type(err).__name__}: {err})")
    return None


def launch_rank() -> int:
    """This process's rank as its launcher set it (0 for a plain start)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def discard_empty_run_dir(run_dir: Path) -> None:
    """A run that failed before the folder accepted it leaves no folder behind,
    unless the folder holds more than what this very call wrote."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "ssl_runner.log", LOCK_FILE}:
        shutil.rmtree(run_dir, ignore_errors=True)
        # The default layout's date folder too, if this run was all it held.
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name) and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()


def resume_command(run_dir: Path) -> str:
    """The command line that resumes this job: its overrides (a sweep job's
    own values, no -m) and its run folder."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.run.dir=")]
    return shlex.join(["python", "-m", "ssl_runner", *overrides, f"hydra.run.dir={run_dir}"])


def save_hydra_files(task_cfg: DictConfig, run_dir: Path) -> None:
    """`.hydra/` (the composed config, Hydra's config, the overrides), written
    once the run folder has accepted this config (conf/config.yaml sets
    hydra.output_subdir=null: Hydra would write them first, over those of a
    run the folder then refuses)."""
    hydra = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    write_text(folder / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra.overrides.task))


def _record_failed_job(cfg: DictConfig, run_dir: Path, failure: Failure) -> None:
    """Add the failure to the job's summary.json (or write one, for a job that
    failed before its pipeline started), for the sweep's table."""
    path = run_dir / SUMMARY
    summary: Dict[str, Any] = {}
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except ValueError:
            summary = {}
    if summary.get("status", "done") == "done":
        summary["status"] = failure.status
    summary.setdefault("error", failure.message.removeprefix("error: "))
    summary.setdefault("method", OmegaConf.select(cfg, "method.name", default=None, throw_on_resolution_failure=False))
    summary.update(exit_code=failure.exit_code, run=run_dir.name,
                   overrides=list(HydraConfig.get().overrides.task))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, summary)
    except OSError as err:
        log.warning("could not record the failure in %s (%s)", path, err)


def run_job(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """Run one job in Hydra's run folder; returns its summary (None after a
    failure in a multirun, where the sweep goes on: `objective_value` turns
    it into what the sweeper receives)."""
    from ssl_runner.validation import validate
    from ssl_runner.methods import METHODS
    from ssl_runner.stages import random_init_names, stage_names
    from ssl_runner.pipeline import planned_stages, run_pipeline
    from ssl_runner.sweeps.objective import check_objective
    from ssl_runner.runtime import keep_freed_memory

    hydra = HydraConfig.get()
    multirun = hydra.mode == RunMode.MULTIRUN
    run_dir = Path(hydra.runtime.output_dir)
    install_stop_handlers()
    lock = RunFolderLock(run_dir) if launch_rank() == 0 else None
    session = None
    accepted = False
    try:
        try:
            if lock is not None:
                lock.acquire()
        except UserError:  # another run's folder: touch nothing, record nothing
            lock = None
            raise
        typed = validate(cfg, METHODS, stage_names())
        check_objective(typed.objective.key, typed.objective.direction, planned_stages(typed), random_init_names())
        if typed.trainer.keep_freed_memory:
            keep_freed_memory()
        launch.check_plan(typed)
        session = launch.start(typed, run_dir)
        if session is not None and session.run_dir != run_dir:
            # torchrun / SLURM: this rank's Hydra made a folder of its own; all use rank 0's.
            discard_empty_run_dir(run_dir)
            run_dir = session.run_dir

        def accept() -> None:
            nonlocal accepted
            accepted = True
            save_hydra_files(cfg, run_dir)

        summary = run_pipeline(typed, run_dir, on_accepted=accept, resume_command=resume_command(run_dir))
        problem = session.finish(failed=False) if session is not None else None
        session = None
        if problem:  # a worker rank failed after this one finished
            raise _WorkerFailed(problem)
    except BaseException as err:
        if isinstance(err, RunStopped):
            ignore_further_signals()
        failure = _failure(err, multirun, run_dir)
        if session is not None:
            problem = session.finish(failed=True, stopped=isinstance(err, RunStopped))
            if problem and failure is None:
                print(problem, file=sys.stderr)
        if failure is None:
            raise
        if failure.message:
            print(failure.message, file=sys.stderr)
        if not multirun or isinstance(err, RunStopped):  # a signal stops a sweep too
            if lock is not None and not accepted:
                discard_empty_run_dir(run_dir)
            sys.exit(failure.exit_code)
        if lock is not None:
            _record_failed_job(cfg, run_dir, failure)
        return None
    finally:
        if lock is not None:
            lock.release()
    if collectives.is_main_process():
        results = {name: stage.get("top1", stage.get("loss")) for name, stage in summary["stages"].items()
                   if "top1" in stage or "loss" in stage}
        log.info("done: %s; run folder %s", results, run_dir)
        objective = summary.get("objective", {})
        if objective.get("value") is None:
            log.error("the objective %s has no value in %s: a sweeper records this job as failed",
                      objective.get("key"), run_dir / SUMMARY)
    return summary


def objective_value(summary: Optional[Dict[str, Any]]) -> Optional[float]:
    """What the job returns to Hydra's sweeper: the objective's value (None
    for a failed job, or one whose summary lacks it: a failed trial)."""
    return None if summary is None else summary.get("objective", {}).get("value")
