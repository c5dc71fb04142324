"""A run's life as a user sees it (issue 16): the CPU preset the main command
picks without a GPU, the start banner and progress lines, stopping by
SIGTERM / SIGINT with a checkpoint and the resume command, a time-based
mid-epoch checkpoint, the fall-back to the previous checkpoint, and a
summary.json that survives a moved run folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, cli_env, compose_config, figures, strict_json
from lightning.pytorch.callbacks import Callback

from ssl_runner import __main__ as entry
from ssl_runner import stopping
from ssl_runner.checkpoints import read_position
from ssl_runner.progress import StageClock, duration

# 4 batches an epoch, 2 epochs, kNN monitor every epoch; kNN and the linear probe after.
RUN = ["method=simclr", "data=cifar10", "experiment=smoke", "data.subset=512", "data.test_subset=256",
       "trainer.max_epochs=2", "eval.random_baseline=false", "eval.linear.epochs=2", "trainer.progress_every_steps=1",
       "trainer.log_every_n_steps=1"]


def run_and_signal(cifar_root: Path, run_dir: Path, signum: int, when: str, *extra: str):
    """Start the CLI, send `signum` to it (by PID) when a line containing `when`
    appears in its output; returns (exit status, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "ssl_runner", *RUN, *extra, f"hydra.run.dir={run_dir}"],
                            env=cli_env(cifar_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, sent = [], False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not sent and when in line:
            proc.send_signal(signum)
            sent = True
    assert sent, "".join(lines[-20:])
    return proc.wait(timeout=600), "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(cifar_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    # With its pictures (tests/conftest.py's CLI helpers turn them off elsewhere):
    # the moved-folder test checks their paths.
    proc = cli(cifar_root, *RUN, "pipeline.plots=true", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout + proc.stderr  # the log lines go to stdout


@pytest.mark.integration
@pytest.mark.parametrize("signum, damage_last", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm", "sigint-then-truncated-last-checkpoint"])
def test_a_signal_mid_epoch_saves_stops_and_the_rerun_gives_the_uninterrupted_figures(
        cifar_root, tmp_path, uninterrupted, signum, damage_last):
    run_dir = tmp_path / "run"
    status, output = run_and_signal(cifar_root, run_dir, signum, "pretrain epoch 2/2 batch 1/4")
    assert status == 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as shells report
    name = signal.Signals(signum).name
    stop = re.search(rf"stopped by {name} in pretrain at epoch 2/2, batch (\d)/4; saved "
                     r"pretrain/checkpoints/last.ckpt there\. Resume with: (python -m ssl_runner .*)", output)
    assert stop, output[-3000:]
    assert stop.group(2).endswith(f"hydra.run.dir={run_dir}")
    last = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    position = read_position(last)
    assert (position.epoch, position.batches_done, position.epoch_finished) == (1, int(stop.group(1)), False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["pretrain"]["status"] == "interrupted"
    first = strict_json(run_dir / "summary.json")
    assert first["status"] == "interrupted" and first["attempts"] == 1
    if damage_last:  # cut the newest checkpoint short: the rerun falls back to the previous one
        last.write_bytes(last.read_bytes()[:1000])
        assert read_position(run_dir / "pretrain" / "checkpoints" / "previous.ckpt").epoch_finished
    command = shlex.split(stop.group(2))
    assert command[:3] == ["python", "-m", "ssl_runner"]
    rerun = subprocess.run([sys.executable, *command[1:]], env=cli_env(cifar_root), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    if damage_last:
        assert "its last checkpoint could not be read" in rerun.stdout
        assert "resuming from the previous one, saved at the end of epoch 1" in rerun.stdout
    reference = uninterrupted[0]
    assert figures(strict_json(run_dir / "summary.json")) == figures(strict_json(reference / "summary.json"))
    # The wall clock counts both attempts, the first as it was when it stopped.
    attempts = json.loads((run_dir / "manifest.json").read_text())["attempt_seconds"]
    resumed = strict_json(run_dir / "summary.json")
    assert len(attempts) == resumed["attempts"] == 2 and attempts[0] == first["wall_seconds"]
    assert resumed["wall_seconds"] == round(sum(attempts), 1) > first["wall_seconds"]
    # Every logged row too: the step rows of the resumed epoch and its means over all four batches.
    assert ((run_dir / "pretrain" / "metrics.csv").read_text()
            == (reference / "pretrain" / "metrics.csv").read_text())



class SigtermDuringLastBatch(Callback):
    """Sends SIGTERM to this process as the last batch of epoch `epoch` (0-based)
    starts: the request is seen at that batch's end."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.integration
def test_a_signal_at_an_epochs_last_batch_stops_after_that_epoch_and_resumes_exactly(
        cifar_root, tmp_path, uninterrupted, monkeypatch):
    """A checkpoint at the last batch's end used to resume as if the epoch had
    ended without its end: no validation, monitors or means for it, and the next
    epoch's first batch drew unseeded views (the loss drifted). The epoch now
    ends first; the run stops before the next one."""
    from ssl_runner.pipeline import run_pipeline

    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    handlers = {signum: signal.getsignal(signum) for signum in stopping.STOP_SIGNALS}
    run_dir = tmp_path / "run"
    try:
        stopping.install_stop_handlers()  # as the CLI does at a job's start
        with pytest.raises(stopping.RunStopped) as stopped:
            run_pipeline(compose_config(RUN), run_dir, callbacks=[SigtermDuringLastBatch(epoch=0)])
        position = read_position(run_dir / "pretrain" / "checkpoints" / "last.ckpt")
        stopping.install_stop_handlers()
        summary = run_pipeline(compose_config(RUN), run_dir)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    reference = uninterrupted[0]
    assert figures(summary) == figures(strict_json(reference / "summary.json"))
    assert summary["stages"]["pretrain"]["monitors"]["rankme"][0] is not None  # epoch 1's monitors ran
    assert ((run_dir / "pretrain" / "metrics.csv").read_text()
            == (reference / "pretrain" / "metrics.csv").read_text())
    assert str(stopped.value) == ("stopped by SIGTERM in pretrain at the end of epoch 1/2; saved "
                                  "pretrain/checkpoints/last.ckpt there")
    assert (position.epoch, position.batches_done, position.epoch_finished) == (0, 4, True)

@pytest.mark.integration
@pytest.mark.distributed
def test_sigterm_to_rank_0_of_two_processes_stops_both_and_resumes_exactly(cifar_root, tmp_path):
    """`kill` reaches rank 0 only: the ranks agree at the batch's end, save
    together (each rank's epoch sums in rank 0's file) and the rerun on two
    processes matches the uninterrupted two-process run row for row."""
    two = ["trainer=ddp_cpu", "data.subset=1024", "pipeline=pretrain"]
    reference = tmp_path / "uninterrupted"
    proc = cli(cifar_root, *RUN, *two, f"hydra.run.dir={reference}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    status, output = run_and_signal(cifar_root, run_dir, signal.SIGTERM, "pretrain epoch 2/2 batch 1/4", *two)
    assert status == 143
    assert output.count("stopped by SIGTERM in pretrain at epoch 2/2") == 1, output[-3000:]
    assert not read_position(run_dir / "pretrain" / "checkpoints" / "last.ckpt").epoch_finished
    rerun = cli(cifar_root, *RUN, *two, f"hydra.run.dir={run_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert figures(strict_json(run_dir / "summary.json")) == figures(strict_json(reference / "summary.json"))
    assert ((run_dir / "pretrain" / "metrics.csv").read_text()
            == (reference / "pretrain" / "metrics.csv").read_text())


@pytest.mark.integration
def test_a_time_based_checkpoint_mid_epoch_resumes_exactly_after_sigkill(cifar_root, tmp_path, uninterrupted):
    """trainer.checkpoint_every_minutes: a kill loses at most that much; here a
    checkpoint at (nearly) every batch, and SIGKILL in the second epoch."""
    run_dir = tmp_path / "run"
    every = "trainer.checkpoint_every_minutes=0.00001"
    status, _ = run_and_signal(cifar_root, run_dir, signal.SIGKILL, "pretrain epoch 2/2 batch 2/4", every)
    assert status == -signal.SIGKILL
    position = read_position(run_dir / "pretrain" / "checkpoints" / "last.ckpt")
    assert position.epoch == 1 and not position.epoch_finished and position.batches_done >= 1
    rerun = cli(cifar_root, *RUN, every, f"hydra.run.dir={run_dir}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"(saved at epoch 2, batch {position.batches_done}/4)" in rerun.stdout
    reference = uninterrupted[0]
    resumed = strict_json(run_dir / "summary.json")
    assert figures(resumed) == figures(strict_json(reference / "summary.json"))
    # The killed attempt is on record up to its stage's start: two attempts in the wall clock.
    attempts = json.loads((run_dir / "manifest.json").read_text())["attempt_seconds"]
    assert resumed["attempts"] == len(attempts) == 2 and attempts[0] > 0


@pytest.mark.integration
def test_a_signal_outside_training_stops_at_once_with_the_resume_command(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    status, output = run_and_signal(cifar_root, run_dir, signal.SIGTERM, "  run folder:")
    assert status == 143
    assert re.search(r"stopped by SIGTERM[^\n]*\. Resume with: python -m ssl_runner .*hydra.run.dir=", output)


@pytest.mark.integration
def test_a_signal_landing_in_a_config_access_still_stops_the_run_with_its_status(monkeypatch):
    """The handler raises where the signal lands; OmegaConf re-creates an
    exception raised inside its attribute access from its message (this
    happened in CI: a ValueError and exit 1 instead of 143)."""
    from omegaconf import DictConfig, OmegaConf

    from ssl_runner import stopping
    from ssl_runner.config import RunConfig

    cfg = OmegaConf.structured(RunConfig)
    monkeypatch.setattr(stopping._Requests, "signum", signal.SIGTERM)

    def signal_lands_here(*args, **kwargs):
        raise stopping.RunStopped(signal.SIGTERM)

    monkeypatch.setattr(DictConfig, "_get_impl", signal_lands_here)
    with pytest.raises(stopping.RunStopped) as stopped:
        cfg.objective  # noqa: B018
    assert stopped.value.exit_code == 143 and str(stopped.value) == "stopped by SIGTERM"


def test_the_banner_and_progress_lines_say_what_runs(uninterrupted):
    run_dir, log = uninterrupted
    for expected in ("ssl-runner: simclr on cifar10 (512 training / 256 test images, 32 px), backbone resnet_tiny",
                     "2 epochs, global batch 128 (128 per device x 1 process(es)), cpu:",
                     "stages: 1 pretrain -> 2 knn -> 3 linear", f"run folder: {run_dir}",
                     "to resume this run if it stops: python -m ssl_runner method=simclr data=cifar10"):
        assert expected in log, expected
    # 1-based epochs, the stage, a line every step (trainer.progress_every_steps=1) and one per epoch.
    assert "stage 1/3 pretrain epoch 1/2 batch 1/4: loss" in log
    assert "stage 1/3 pretrain epoch 2/2 batch 3/4: loss" in log
    assert re.search(r"stage 1/3 pretrain epoch 2/2 done \([\d.]+ s\)", log)
    assert "stage 3/3 linear epoch 2/2 done" in log


def test_the_etas_come_from_the_timed_batches_and_the_later_stages_work(monkeypatch):
    from types import SimpleNamespace

    from ssl_runner import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    progress.set_plan(progress.RunPlan(["pretrain", "knn"], {"pretrain": 1000.0, "knn": 500.0}))
    clock = StageClock("pretrain", 1000.0)
    trainer = SimpleNamespace(num_training_batches=10, max_epochs=2, current_epoch=0,
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_idx=9)))
    for _ in range(9):  # 4 untimed batches, then 5 timed at 2 s each
        now[0] += 2.0
        clock.batch_done()
    assert clock.etas(trainer) == {}  # not enough timed batches yet
    now[0] += 2.0
    clock.batch_done()
    # 10 batches left at 2 s; the stage's 1000 units take 20 batches x 2 s = 40 s, so kNN's 500 take 20 s.
    assert clock.etas(trainer) == {"stage ETA": "20s", "run ETA": "≈40s"}
    progress.set_plan(None)
    assert duration(3725) == "1h02m" and duration(65) == "1m05s"


@pytest.mark.integration
def test_summary_paths_are_relative_and_a_moved_run_folder_still_works(cifar_root, tmp_path, uninterrupted):
    run_dir = tmp_path / "moved"
    shutil.copytree(uninterrupted[0], run_dir)
    summary = strict_json(run_dir / "summary.json")

    def strings(tree):
        if isinstance(tree, dict):
            return [s for v in tree.values() for s in strings(v)]
        if isinstance(tree, list):
            return [s for v in tree for s in strings(v)]
        return [tree] if isinstance(tree, str) else []

    assert not [s for s in strings(summary) if s.startswith("/") or str(tmp_path) in s]
    files = [s for s in strings(summary) if s.endswith((".ckpt", ".pt", ".png"))]
    assert "pretrain/encoder.pt" in files and "pretrain/curves.png" in files
    assert all((run_dir / f).is_file() for f in files)
    assert summary["run"] == "run" and summary["train_images"] == 512 and summary["test_images"] == 256
    rerun = cli(cifar_root, *RUN, f"hydra.run.dir={run_dir}")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "pretrain: already done" in rerun.stdout and "linear: already done" in rerun.stdout
    assert figures(strict_json(run_dir / "summary.json")) == figures(summary)


@pytest.mark.integration
def test_image_counts_are_the_images_used_and_first_step_seconds_are_the_jobs_own(cifar_root, tmp_path):
    """A 24-image folder with data.subset=100 reports 24; in a two-job sweep the
    second job's seconds to its first step are less than its wall time."""
    for split, count in (("train", 8), ("test", 4)):
        for name in ("cat", "dog", "ship"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for src in sorted((cifar_root / split / name).iterdir())[:count]:
                shutil.copy(src, tmp_path / "data" / split / name / src.name)
    sweep = tmp_path / "sweep"
    proc = cli(cifar_root, "-m", "data=imagefolder", f"data.root={tmp_path / 'data'}", "experiment=smoke",
               "data.subset=100", "data.test_subset=100", "data.batch_size=8", "pipeline=pretrain",
               "trainer.max_epochs=1", "monitor.knn_every_n_epochs=0", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (strict_json(sweep / f"{i}_simclr" / "summary.json") for i in (0, 1))
    assert first["train_images"] == 24 and first["test_images"] == 12
    assert second["stages"]["pretrain"]["seconds_to_first_step"] < second["wall_seconds"]


def test_without_a_gpu_a_command_naming_no_preset_gets_the_cpu_preset(monkeypatch, capsys):
    monkeypatch.setattr(entry, "has_accelerator", lambda: False)
    assert entry.choose_cpu_preset(["method=simclr", "data=cifar10"]) == [
        "method=simclr", "data=cifar10", "experiment=cifar10_cpu"]
    assert "experiment=none" in capsys.readouterr().err
    for named in (["experiment=smoke"], ["experiment=none"], ["pipeline=eval", "checkpoint=x.pt"], ["--help"]):
        assert entry.choose_cpu_preset(named) == named
    monkeypatch.setattr(entry, "has_accelerator", lambda: True)
    assert entry.choose_cpu_preset(["method=simclr"]) == ["method=simclr"]


@pytest.mark.integration
def test_the_main_command_on_this_cpu_machine_runs_the_cpu_preset(cifar_root, tmp_path):
    if entry.has_accelerator():
        pytest.skip("this machine has a GPU: the main command runs the default recipe")
    run_dir = tmp_path / "run"
    # The main command, shortened by overrides (they win over the preset) to a few seconds.
    proc = cli(cifar_root, "method=simclr", "data=cifar10", "data.subset=256", "data.test_subset=128",
               "trainer.max_epochs=1", "pipeline=pretrain", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU here, so this runs the CPU preset experiment=cifar10_cpu" in proc.stderr
    summary = strict_json(run_dir / "summary.json")
    assert summary["backbone"] == "resnet_tiny" and summary["batch_size"] == 256  # the preset's
    assert "experiment=cifar10_cpu" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert os.path.isfile(run_dir / "pretrain" / "encoder.pt")
