"""The Optuna search behind `hydra/sweeper=optuna` (the Hydra plugin in
`hydra_plugins/ssl_runner_optuna/` only hands its settings here).

Optuna's ask/tell API, so that the sweep, not Optuna's `optimize` loop,
decides what a rerun does (docs/sweeps.md says why we keep our own):

- The study lives in a real database in the sweep folder (SQLite by default;
  a journal file for jobs on a cluster's shared file system; any URL), so
  rerunning the same command resumes it: `n_trials` is the study's total,
  and only the trials still missing run.
- Trial k runs in `<sweep dir>/<k>_<method>`: numbers never repeat within a
  study, so no job overwrites an earlier one's folder. A trial that was
  interrupted (a signal, a killed process) reruns with the same values in
  its own folder, where the run resumes from its checkpoint.
- The sampler's seed is the configured seed plus the number of trials
  already in the study: a resumed search does not re-propose its first points.
- A job that fails is a failed trial with its error; the search goes on until
  more than `max_failure_rate` of `n_trials` have failed.
- A command whose settings differ from those that started the study is
  refused: it would mix two searches in one table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from ssl_runner.errors import UserError
from ssl_runner.safe_io import write_text
from ssl_runner.sweeps.job_info import sweep_name

log = logging.getLogger("ssl_runner.sweeps")

SAMPLERS = ("tpe", "random")
DEFAULT_DB, DEFAULT_JOURNAL = "optuna.db", "optuna.journal"
# The trial's user attributes this module keeps.
HOST, PID, JOB_FOLDER, INTERRUPTED, RETRY_OF, ERROR = "host", "pid", "job_folder", "interrupted", "retry_of", "error"


def search_space(parser: Any, params: Dict[str, str], arguments: Sequence[str]) -> Tuple[Dict[str, Any], List[str]]:
    """The distributions to search (from `hydra.sweeper.params` and any sweep
    syntax on the command line: `interval(a,b)`, `tag(log,interval(a,b))`,
    `choice(a,b)`, `range(a,b)`, `a,b`) and the fixed overrides."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: Dict[str, Any] = {}
    fixed: Dict[str, str] = {}
    for override in parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments)):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = f"{key}={override.get_value_element_as_str()}"
            continue
        sweep = override.value()
        if isinstance(sweep, IntervalSweep):
            log_scale = "log" in sweep.tags
            if isinstance(sweep.start, int) and isinstance(sweep.end, int):
                space[key] = IntDistribution(sweep.start, sweep.end, log=log_scale)
            else:
                space[key] = FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
        elif isinstance(sweep, RangeSweep):
            space[key] = CategoricalDistribution(list(sweep.range()))
        elif isinstance(sweep, ChoiceSweep):
            space[key] = CategoricalDistribution(list(override.sweep_iterator()))
        else:  # pragma: no cover - Hydra has no other sweep type
            raise UserError(f"the search space of {key} ({override.input_line}) is not one Optuna can sample.")
    return space, list(fixed.values())


def open_storage(storage: Optional[str], sweep_dir: Path) -> Any:
    """null or "sqlite": SQLite in the sweep folder (one machine); "journal"
    or "journal:PATH": Optuna's journal file (jobs on several machines that
    share a file system); anything else: an SQLAlchemy URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    sweep_dir.mkdir(parents=True, exist_ok=True)
    if storage in (None, "sqlite"):
        return f"sqlite:///{(sweep_dir / DEFAULT_DB).resolve()}"
    if storage == "journal" or str(storage).startswith("journal:"):
        path = str(storage).partition(":")[2] or str(sweep_dir / DEFAULT_JOURNAL)
        return JournalStorage(JournalFileBackend(path))
    return optuna.storages.RDBStorage(str(storage))


def make_sampler(name: str, seed: int, n_startup_trials: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def _alive(trial: Any) -> bool:
    """Whether a RUNNING trial's process may still run it (another machine's: assumed so)."""
    if trial.user_attrs.get(HOST) != socket.gethostname():
        return True
    try:
        os.kill(int(trial.user_attrs.get(PID, -1)), 0)
    except (OSError, ValueError):
        return False
    return True


def requeue_interrupted(study: Any) -> int:
    """Interrupted trials (told so, or RUNNING in a process that is gone) run
    again with their values in their own folder (where the run resumes);
    returns how many."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get(RETRY_OF) for t in study.trials}
    count = 0
    for trial in study.trials:
        stale = trial.state == TrialState.RUNNING and not _alive(trial)
        if trial.number in retried or not (stale or (trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED))):
            continue
        if stale:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number, JOB_FOLDER: trial.user_attrs[JOB_FOLDER]})
        count += 1
    return count


def trial_counts(study: Any) -> Tuple[int, int, int]:
    """(finished, failed, running elsewhere): interrupted trials count as not finished."""
    from optuna.trial import TrialState

    finished = failed = running = 0
    for t in study.trials:
        if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED):
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            finished += 1
            failed += t.state == TrialState.FAIL
        elif t.state == TrialState.RUNNING and _alive(t) and t.user_attrs.get(PID) != os.getpid():
            running += 1
    return finished, failed, running


def check_same_search(study: Any, identity: Dict[str, Any], storage_text: str) -> None:
    recorded = study.user_attrs.get("command")
    if recorded is None:
        study.set_user_attr("command", identity)
    elif recorded != identity:
        then, now = (set(recorded.get("fixed", [])), set(identity["fixed"]))
        changed = [f"{k}: {recorded.get(k)} then, {identity.get(k)} now" for k in ("space", "objective")
                   if recorded.get(k) != identity.get(k)]
        changed += [f"overrides {sorted(then - now)} then, {sorted(now - then)} now"] if then != now else []
        raise UserError(
            f"the Optuna study '{study.study_name}' in {storage_text} was started by a command with other settings "
            f"({'; '.join(changed)}). Rerun the "
            "command that started it to resume it, or start a new study in another folder with "
            "hydra.sweep.dir=<folder> (or hydra.sweeper.study_name=<name>).")


def job_error(ret: Any) -> str:
    """Why a job failed: its summary's error, else the exception it raised."""
    # The job's folder (its working directory is the sweep's: hydra.job.chdir=false).
    folder = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None) if ret.hydra_cfg else None
    summary = Path(str(folder)) / "summary.json"
    if folder is not None and summary.is_file():
        try:
            return str(json.loads(summary.read_text()).get("error") or "no objective value")
        except ValueError:
            pass
    value = getattr(ret, "_return_value", None)
    return f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else "no objective value"


def format_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    if isinstance(value, str) and any(c in value for c in " ,:=()[]{}'\"\\$"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value) if isinstance(value, float) else str(value)


def trial_value(ret: Any) -> Optional[float]:
    from hydra.core.utils import JobStatus

    if ret.status != JobStatus.COMPLETED:
        return None
    value = ret.return_value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def run_study(settings: Any, config: DictConfig, launcher: Any, parser: Any, arguments: Sequence[str],
              validate_batch: Any) -> List[Any]:
    """Resume or start the study, then launch trials `settings.n_jobs` at a
    time until `settings.n_trials` have finished or too many have failed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if settings.sampler not in SAMPLERS:
        raise UserError(f"hydra.sweeper.sampler={settings.sampler!r} is not one of {', '.join(SAMPLERS)}.")
    if settings.n_trials < 1 or settings.n_jobs < 1 or not 0 <= settings.max_failure_rate <= 1:
        raise UserError("hydra.sweeper.n_trials and n_jobs must be at least 1 and max_failure_rate between 0 and 1 "
                        f"(got {settings.n_trials}, {settings.n_jobs}, {settings.max_failure_rate}).")
    space, fixed = search_space(parser, dict(settings.params or {}), arguments)
    if not space:
        raise UserError("the Optuna sweeper has nothing to search: give hydra.sweeper.params (e.g. "
                        "hydra.sweeper.params.optimizer.lr='tag(log,interval(0.05,5))') or a preset "
                        "such as hparams_search=simclr_optuna.")
    sweep_dir = Path(str(config.hydra.sweep.dir))
    storage = open_storage(settings.storage, sweep_dir)
    storage_text = storage if isinstance(storage, str) else f"{type(storage).__name__} ({settings.storage})"
    direction = OmegaConf.select(config, "objective.direction", default="maximize")
    study = optuna.create_study(storage=storage, study_name=settings.study_name or sweep_name(sweep_dir),
                                direction=direction, load_if_exists=True)
    identity = {"fixed": sorted(fixed), "space": {k: repr(v) for k, v in sorted(space.items())},
                "objective": f"{OmegaConf.select(config, 'objective.key', default='auto')} ({direction})"}
    check_same_search(study, identity, storage_text)
    write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(config))
    requeued = requeue_interrupted(study)
    # Seeded by the study's size: a resumed search goes on from where it was, not from its first points.
    study.sampler = make_sampler(settings.sampler, settings.seed + len(study.trials), settings.n_startup_trials)
    finished, failed, running = trial_counts(study)
    log.info("Optuna study '%s' in %s: %d of n_trials=%d finished (%d failed)%s%s", study.study_name, storage_text,
             finished, settings.n_trials, failed, f", {running} running elsewhere" if running else "",
             f", {requeued} interrupted ones to rerun" if requeued else "")
    returns: List[Any] = []
    while True:
        finished, failed, running = trial_counts(study)
        missing = settings.n_trials - finished - running
        if failed > settings.max_failure_rate * settings.n_trials:
            log.error("stopping the search: %d of %d trials failed, more than hydra.sweeper.max_failure_rate=%s "
                      "allows; the table below says why", failed, settings.n_trials, settings.max_failure_rate)
            break
        if missing <= 0:
            if not returns:
                log.info("nothing to run: the study has its n_trials=%d (raise hydra.sweeper.n_trials for more)",
                         settings.n_trials)
            break
        trials = [study.ask(space) for _ in range(min(settings.n_jobs, missing))]
        batch = []
        for trial in trials:
            folder = trial.user_attrs.get(JOB_FOLDER) or f"{trial.number}_${{method.name}}"
            for key, value in ((HOST, socket.gethostname()), (PID, os.getpid()), (JOB_FOLDER, folder)):
                trial.set_user_attr(key, value)
            batch.append([*fixed, *(f"{k}={format_value(v)}" for k, v in trial.params.items()),
                          f"hydra.sweep.subdir={folder}"])
        try:
            validate_batch(batch)
            results = launcher.launch(batch, initial_job_idx=trials[0].number)
        except BaseException:
            # A signal or a crash of the sweep itself: these trials rerun, resumed, next time.
            for trial in trials:
                trial.set_user_attr(INTERRUPTED, True)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        for trial, ret in zip(trials, results):
            value = trial_value(ret)
            if value is None:
                trial.set_user_attr(ERROR, job_error(ret)[:500])
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, value)
            log.info("trial %d: %s -> %s", trial.number, " ".join(f"{k}={format_value(v)}" for k, v in trial.params.items()),
                     "failed" if value is None else f"{value:.4g}")
        returns.append(results)
    return returns
