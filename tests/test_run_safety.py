"""No silent wrong number, no lost state: divergence stops a run with a
non-zero exit and a finite checkpoint; a run folder admits one run at a time;
a sweep outlives its bad jobs; a full or read-only disk is one paragraph;
bad input leaves nothing that blocks the corrected command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, cli_env, compose_config, strict_json
from lightning.pytorch.callbacks import Callback

from ssl_runner.errors import TrainingDiverged
from ssl_runner.pipeline import run_pipeline

pytestmark = pytest.mark.integration

TINY = ["method=simclr", "data=cifar10", "experiment=smoke", "data.subset=256", "data.test_subset=128",
        "data.batch_size=64", "trainer.max_epochs=2", "eval.random_baseline=false", "eval.linear.epochs=2",
        "monitor.knn_every_n_epochs=0", "pipeline.plots=false"]


def _finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


class PoisonWeights(Callback):
    """Makes one weight NaN at the second batch of the second epoch, after
    recording the checkpoint that the first epoch left."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.saved = (Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt").read_bytes()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (1, 1):
            weight = next(pl_module.backbone.parameters())
            with torch.no_grad():
                weight[(0,) * weight.dim()] = float("nan")


def test_a_non_finite_loss_stops_the_stage_at_once_and_keeps_the_last_finite_checkpoint(tmp_path, cifar_root,
                                                                                       monkeypatch):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    poison = PoisonWeights()
    with pytest.raises(TrainingDiverged, match=r"pretrain stage diverged: .* at epoch 2, batch 2 .*optimizer\.lr="):
        run_pipeline(compose_config([*TINY, "trainer.max_epochs=3"]), tmp_path, callbacks=[poison])
    ckpt = tmp_path / "pretrain/checkpoints/last.ckpt"
    assert ckpt.read_bytes() == poison.saved and _finite(ckpt)  # epoch 1's state, untouched
    summary = strict_json(tmp_path / "summary.json")
    assert summary["status"] == "diverged" and summary["stages"]["pretrain"]["status"] == "diverged"


def test_on_a_gpu_the_checks_are_read_every_n_steps_and_no_checkpoint_holds_the_bad_steps(tmp_path, cifar_root,
                                                                                        monkeypatch):
    """The GPU's deferred reading (callbacks.defers_checks), played on the CPU:
    the poisoned step (epoch 2, batch 2: step 6) is found at the next read, at
    most log_every_n_steps = 3 steps later, and the checkpoint is still epoch 1's."""
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    monkeypatch.setattr("ssl_runner.callbacks.defers_checks", lambda device: True)
    poison = PoisonWeights()
    with pytest.raises(TrainingDiverged, match=r"between optimizer steps [4-6] and [6-8] \(epoch 2; read every 3"):
        run_pipeline(compose_config([*TINY, "trainer.max_epochs=3", "trainer.log_every_n_steps=3"]), tmp_path,
                     callbacks=[poison])
    ckpt = tmp_path / "pretrain/checkpoints/last.ckpt"
    assert ckpt.read_bytes() == poison.saved and _finite(ckpt)


def test_a_diverging_learning_rate_exits_non_zero_with_strict_json(tmp_path, cifar_root):
    proc = cli(cifar_root, *TINY, "pipeline=pretrain", "optimizer.lr=1e6", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 4, proc.stderr[-3000:]
    message = " ".join(proc.stderr.split())
    assert "pretrain stage diverged" in message and "optimizer.lr=1000000.0" in message
    assert "Traceback" not in proc.stderr
    summary = strict_json(tmp_path / "summary.json")
    assert summary["status"] == "diverged"
    strict_json(tmp_path / "manifest.json")
    ckpt = tmp_path / "pretrain/checkpoints/last.ckpt"
    assert not ckpt.exists() or _finite(ckpt)


def test_a_sweep_records_bad_and_diverged_jobs_and_goes_on(tmp_path, cifar_root):
    sweep = tmp_path / "sweep"
    proc = cli(cifar_root, "-m", *TINY, "optimizer.lr=1e6,0.3", "data.batch_size=0,64", f"hydra.sweep.dir={sweep}")
    summaries = [json.loads((sweep / f"{n}_simclr" / "summary.json").read_text()) for n in range(4)]
    # Hydra's grid order (keys sorted, the last fastest): (0, 1e6), (0, 0.3), (64, 1e6), (64, 0.3).
    assert [s["status"] for s in summaries] == ["failed", "failed", "diverged", "done"]
    assert [s.get("exit_code") for s in summaries] == [2, 2, 4, None]
    assert "data.batch_size" in summaries[0]["error"] and summaries[3]["stages"]["linear"]["status"] == "done"
    assert proc.returncode == 2  # the first failed job's status, after every job ran
    table = (sweep / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| simclr")]
    assert len(rows) == 4 and "| status |" in table
    by_run = {line.strip("| ").split(" | ")[-1]: line for line in rows}
    assert "failed: " in by_run["0_simclr"] and "diverged in pretrain: " in by_run["2_simclr"]
    assert "| done |" in by_run["3_simclr"]
    assert rows[0].endswith("| 3_simclr |")  # sorted by the objective: the one job with a value first


def test_a_second_run_in_a_busy_folder_is_refused_and_the_first_loses_nothing(tmp_path, cifar_root):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ssl_runner", *TINY, "trainer.max_epochs=4", "pipeline.plots=false",
            f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(args, env=cli_env(cifar_root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lock = run_dir / ".lock"
    while first.poll() is None and not (lock.is_file() and lock.read_text()):
        time.sleep(0.05)
    # Held still (alive, lock held) while the second starts: on a busy machine
    # the first could otherwise finish during the second's start-up (CI, 2026-12-07).
    first.send_signal(signal.SIGSTOP)
    try:
        second = cli(cifar_root, *TINY, "trainer.max_epochs=4", f"hydra.run.dir={run_dir}")
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.poll() is None, f"the first run ended early (rc {first.returncode}): {first.stderr.read()[-3000:]}"
    assert second.returncode == 2, second.stdout[-2000:]
    assert "in use by another ssl_runner run" in " ".join(second.stderr.split())
    assert f"pid {first.pid} " in second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    summary = strict_json(run_dir / "summary.json")
    assert summary["status"] == "done"
    with open(run_dir / "pretrain/metrics.csv") as fh:
        header, *rows = [line.split(",") for line in fh.read().splitlines()]
    epochs = [r[header.index("epoch")] for r in rows if r[header.index("train/loss_epoch")]]
    assert epochs == ["0", "1", "2", "3"]
    assert lock.read_text() == ""  # released


def test_a_folder_that_refused_bad_input_takes_the_corrected_command(tmp_path, cifar_root):
    """Also: a lock left by a run that died is taken over."""
    run_dir = tmp_path / "run"
    bad = cli(cifar_root, *TINY, "data.subset=100", "data.batch_size=128", f"hydra.run.dir={run_dir}")
    assert bad.returncode == 2 and "larger than the training set" in " ".join(bad.stderr.split())
    assert run_dir.is_dir()  # the failed stage is recorded
    (run_dir / ".lock").write_text("pid 999999 on elsewhere since yesterday\n")
    good = cli(cifar_root, *TINY, "data.subset=100", "data.batch_size=50", f"hydra.run.dir={run_dir}")
    assert good.returncode == 0, good.stderr[-3000:]
    assert strict_json(run_dir / "summary.json")["status"] == "done"
    assert "took over the lock of a run that ended without releasing it" in (run_dir / "ssl_runner.log").read_text()
    overrides = (run_dir / ".hydra/overrides.yaml").read_text()
    assert "data.batch_size=50" in overrides
    # A changed config in a folder with results is refused, and .hydra/ keeps the run's own.
    refused = cli(cifar_root, *TINY, "data.subset=100", "data.batch_size=25", f"hydra.run.dir={run_dir}")
    assert refused.returncode == 2 and "different config" in refused.stderr
    assert (run_dir / ".hydra/overrides.yaml").read_text() == overrides


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (where this machine lets the test mount one)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _orphans(folder: Path):
    return [p for p in folder.rglob("*") if ".tmp." in p.name]


def test_a_full_disk_and_a_read_only_one_are_one_paragraph_and_lose_nothing(small_tmpfs, cifar_root, tmp_path):
    run_dir = small_tmpfs / "run"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    args = [*TINY, "pipeline=pretrain", f"hydra.run.dir={run_dir}"]
    full = cli(cifar_root, *args, extra_env={"TMPDIR": str(tmpdir)})
    assert full.returncode == 2, full.stderr[-3000:]
    message = " ".join(full.stderr.split())
    assert f"could not write {run_dir}" in message and "disk (or quota) is full" in message
    assert "Traceback" not in full.stderr
    assert not _orphans(small_tmpfs) and not any(tmpdir.iterdir())  # no half-written file, no orphan in $TMPDIR
    strict_json(run_dir / "manifest.json")

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    freed = cli(cifar_root, *args)
    assert freed.returncode == 0, freed.stderr[-3000:]
    pretrain = strict_json(run_dir / "summary.json")["stages"]["pretrain"]
    assert pretrain["status"] == "done" and pretrain["loss"] > 0 and pretrain["embedding_std"] > 0

    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    for folder in (run_dir, small_tmpfs / "new"):  # an existing folder, and one that cannot be made
        proc = cli(cifar_root, *TINY, "trainer.max_epochs=3", f"hydra.run.dir={folder}")
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "the file system is read-only" in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
