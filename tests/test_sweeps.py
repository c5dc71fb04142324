"""Sweeps: the objective a job returns, and the Optuna sweeper (resume
without repeats, no overwritten folders, interrupted trials resumed in
their own folder, failure tolerance), run as a user runs them."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssl_runner.errors import UserError
from ssl_runner.sweeps.objective import check_objective, objective_value, resolve_key
from conftest import cli, cli_env, without_plots

optuna = pytest.importorskip("optuna")

PLANNED = ["pretrain", "knn", "linear", "knn_random_init", "linear_random_init"]
TWINS = ["knn_random_init", "linear_random_init", "nonlinear_random_init"]
# A trial in about 5 s on 2 cores (plus the process's start for the first).
TINY = ["experiment=smoke", "data.subset=500", "data.test_subset=500", "trainer.max_epochs=1",
        "eval.linear.epochs=1", "eval.random_baseline=false"]


def test_auto_objective_is_the_last_evaluation_stage():
    from ssl_runner.stages.registry import evaluation_stages

    assert evaluation_stages(PLANNED) == ["knn", "linear"]
    assert evaluation_stages(["pretrain", "export", "knn_random_init"]) == []
    assert resolve_key("auto", evaluation_stages(PLANNED)) == "stages.linear.top1"
    assert resolve_key("auto", evaluation_stages(["pretrain", "knn", "knn_random_init"])) == "stages.knn.top1"
    assert resolve_key("auto", evaluation_stages(["pretrain", "export"])) == "stages.pretrain.loss"
    assert resolve_key("stages.knn.top1", ["knn", "linear"]) == "stages.knn.top1"


def test_objective_value_is_never_made_up():
    summary = {"status": "done", "stages": {"knn": {"top1": 41.5}, "pretrain": {"loss": 5.2}},
               "baseline": {"knn_random_init": {"top1": 30.0}}}
    assert objective_value(summary, "stages.knn.top1") == 41.5
    assert objective_value(summary, "baseline.knn_random_init.top1") == 30.0
    assert objective_value(summary, "stages.linear.top1") is None
    assert objective_value({**summary, "status": "diverged"}, "stages.knn.top1") is None
    assert objective_value({"status": "done", "stages": {"knn": {"top1": float("nan")}}}, "stages.knn.top1") is None


def test_an_objective_the_run_cannot_report_fails_before_training():
    check_objective("stages.linear.top1", "maximize", PLANNED, TWINS)
    check_objective("baseline.knn_random_init.top1", "maximize", PLANNED, TWINS)
    with pytest.raises(UserError, match="finetune.*knn, linear"):
        check_objective("stages.finetune.top1", "maximize", PLANNED, TWINS)
    with pytest.raises(UserError, match="linear_random_init"):
        check_objective("baseline.linear.top1", "maximize", PLANNED, TWINS)
    with pytest.raises(UserError, match="maximize, minimize"):
        check_objective("auto", "up", PLANNED, TWINS)


class RecordingLauncher:
    """A launcher that runs nothing: it records each batch and returns the
    objective `value_of(overrides)` as Hydra's JobReturn (None: a failed job)."""

    def __init__(self, value_of):
        self.value_of, self.batches = value_of, []

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.batches.append((initial_job_idx, [list(job) for job in batch]))
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=self.value_of(job)) for job in batch]


def _search(tmp_path, launcher, arguments=(), **settings):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.ssl_runner_optuna.optuna_sweeper import OptunaSettings
    from omegaconf import OmegaConf

    from ssl_runner.sweeps.optuna_study import run_study

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}},
                               "objective": {"key": "auto", "direction": "minimize"}})
    settings = OptunaSettings(**{"params": {"optimizer.lr": "tag(log, interval(0.01, 1.0))",
                                            "method.temperature": "choice(0.1, 0.5)"}, **settings})
    return run_study(settings, config, launcher, OverridesParser.create(), list(arguments), lambda batch: None)


def test_optuna_batches_folders_journal_storage_and_failures_without_processes(tmp_path):
    """The sweeper's loop with a launcher that runs nothing: n_jobs trials per
    batch, each in its own numbered folder with the fixed overrides, the study
    in a journal file; a job without a value is a failed trial, and the search
    stops past max_failure_rate."""
    from ssl_runner.sweeps.optuna_study import DEFAULT_JOURNAL, open_storage

    def lr(job):
        return float(next(o for o in job if o.startswith("optimizer.lr=")).split("=")[1])

    launcher = RecordingLauncher(lr)
    _search(tmp_path, launcher, ["seed=3"], n_trials=5, n_jobs=2, storage="journal")
    assert [(first, len(jobs)) for first, jobs in launcher.batches] == [(0, 2), (2, 2), (4, 1)]
    jobs = [job for _, batch in launcher.batches for job in batch]
    assert [job[-1] for job in jobs] == [f"hydra.sweep.subdir={k}_${{method.name}}" for k in range(5)]
    assert all(job[0] == "seed=3" for job in jobs)
    storage = open_storage("journal", tmp_path / "sweep")
    (name,) = optuna.get_all_study_names(storage)
    assert name.endswith("/sweep")  # the sweep folder's name
    study = optuna.load_study(study_name=name, storage=storage)
    assert (tmp_path / "sweep" / DEFAULT_JOURNAL).is_file()
    assert [t.value for t in study.trials] == [lr(job) for job in jobs]
    assert study.best_value == min(lr(job) for job in jobs)  # objective.direction=minimize

    # Another command on the same study is refused, naming what differs, and runs nothing.
    with pytest.raises(UserError, match=r"seed=4.*hydra.sweep.dir"):
        _search(tmp_path, RecordingLauncher(lr), ["seed=4"], n_trials=6, n_jobs=2, storage="journal")

    failing = RecordingLauncher(lambda job: None)
    _search(tmp_path / "failing", failing, n_trials=4, max_failure_rate=0.25)
    assert len([job for _, batch in failing.batches for job in batch]) == 2  # 2 > 0.25 x 4: stop


def test_a_trial_whose_process_is_gone_is_rerun_with_its_values_and_folder(tmp_path):
    import socket
    import subprocess

    from ssl_runner.sweeps.optuna_study import JOB_FOLDER, requeue_interrupted

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    trial = study.ask(dist)
    for key, value in (("host", socket.gethostname()), ("pid", gone.pid), (JOB_FOLDER, "0_${method.name}")):
        trial.set_user_attr(key, value)
    alive = study.ask(dist)  # this process's own trial: still running
    for key, value in (("host", socket.gethostname()), ("pid", os.getpid()), (JOB_FOLDER, "1_${method.name}")):
        alive.set_user_attr(key, value)
    assert requeue_interrupted(study) == 1 and requeue_interrupted(study) == 0  # once only
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "RUNNING", "WAITING"]
    again = study.ask(dist)
    assert again.params == trial.params and again.user_attrs == {"retry_of": 0, JOB_FOLDER: "0_${method.name}"}


def test_the_readme_slurm_search_composes_our_sweeper_with_the_submitit_launcher():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from ssl_runner.__main__ import config_dir

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    command = readme[readme.index("python -m ssl_runner -m hparams_search=simclr_optuna cluster=slurm"):]
    args = command[:command.index("\n\n")].replace("\\\n", " ").split()[4:]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.ssl_runner_optuna.optuna_sweeper.OptunaSweeper"
    assert "submitit" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 1
    assert (cfg.hydra.sweeper.storage, cfg.hydra.sweeper.n_jobs) == ("journal", 8)
    assert cfg.hydra.sweep.dir == "outputs/sweeps/simclr_optuna_simclr_cifar10"


def _trials(sweep_dir: Path):
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)  # one study per sweep folder
    return optuna.load_study(study_name=name, storage=storage).trials


def _folder_state(sweep_dir: Path) -> dict:
    return {str(p.relative_to(sweep_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sweep_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".ckpt", ".pt", ".csv")
            and p.parent != sweep_dir}


@pytest.mark.integration
def test_optuna_study_resumes_runs_only_missing_trials_and_overwrites_nothing(cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=simclr_optuna", *TINY, f"hydra.sweep.dir={sweep}"]
    first = cli(cifar_root, *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:  # the value Optuna holds is the job's objective, read from its own summary
        summary = json.loads((sweep / f"{trial.number}_simclr" / "summary.json").read_text())
        assert summary["objective"]["key"] == "stages.linear.top1"
        assert trial.value == summary["objective"]["value"] == summary["stages"]["linear"]["top1"]
        assert summary["sweep"]["name"].endswith("sweep")
        assert f"optimizer.lr={trial.params['optimizer.lr']!r}" in summary["overrides"]
    before = _folder_state(sweep)

    again = cli(cifar_root, *args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to run" in again.stdout + again.stderr
    assert len(_trials(sweep)) == 2 and _folder_state(sweep) == before

    more = cli(cifar_root, *args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    # A resumed search does not re-propose its first point (the sampler's seed moves on with the study).
    assert trials[2].params not in (trials[0].params, trials[1].params)
    assert {k: v for k, v in _folder_state(sweep).items() if not k.startswith("2_")} == before
    with open(sweep / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {"optimizer.lr", "method.temperature", "optimizer.weight_decay"} <= set(rows[0])
    assert sorted(float(r["optimizer.lr"]) for r in rows) == sorted(t.params["optimizer.lr"] for t in trials)



@pytest.mark.integration
def test_an_interrupted_trial_reruns_in_its_own_folder_and_resumes(cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "hparams_search=simclr_optuna", *TINY, f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=1",
            "trainer.max_epochs=2"]
    proc = subprocess.Popen([sys.executable, "-m", "ssl_runner", *without_plots(args)], cwd=tmp_path,
                            env=cli_env(cifar_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    checkpoint = sweep / "0_simclr" / "pretrain" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while proc.poll() is None and not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert [(t.state.name, t.user_attrs.get("interrupted")) for t in _trials(sweep)] == [("FAIL", True)]

    resumed = cli(cifar_root, *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["retry_of"] == 0
    assert "resuming from" in resumed.stdout and sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_simclr"]


@pytest.mark.integration
def test_failed_trials_are_recorded_and_the_search_stops_past_its_tolerance(cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    # Every trial diverges: with max_failure_rate 0.5 of 3 trials, the search stops after the second failure.
    proc = cli(cifar_root, "-m", "hparams_search=simclr_optuna", *TINY, f"hydra.sweep.dir={sweep}",
               "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0.5",
               "optimizer.lr=choice(1e6)", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-3000:]  # the first failed job's exit status: diverged
    trials = _trials(sweep)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("diverged" in t.user_attrs["error"] for t in trials)  # the job's own error, from its summary
    assert "max_failure_rate" in proc.stdout + proc.stderr
    with open(sweep / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"].split()[0] for r in rows] == ["diverged", "diverged"]
