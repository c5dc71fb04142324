"""Resume reproduces: a run killed anywhere and rerun gives exactly the
uninterrupted run's summary, on one process and on two; a checkpoint that
cannot be read is set aside and the stage restarts; a killed writer's
temporary files and a killed epoch's metrics rows do not survive.

Kills are real: SIGKILL to the run's whole process group, as soon as the
stage's first checkpoint exists (so inside its second epoch)."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import cli, cli_killed_when, compose_config, figures
from lightning.pytorch.callbacks import Callback

from ssl_runner.pipeline import run_pipeline

pytestmark = pytest.mark.integration

# A small run of every default stage: pretraining 3 epochs (kNN monitor every
# epoch), kNN, then a 5-epoch linear probe.
TINY = ["method=simclr", "data=cifar10", "experiment=smoke", "data.subset=256", "data.test_subset=128",
        "data.batch_size=64", "trainer.max_epochs=3", "monitor.knn_every_n_epochs=1", "eval.random_baseline=false",
        "eval.linear.epochs=5", "eval.linear.batch_size=64", "pipeline.plots=false"]
# One process with the linear probe on cached features; two (gloo) with the
# probe on augmented images, sharded over the ranks.
VARIANTS = {"1 process": [], "2 processes": ["trainer=ddp_cpu", "eval.linear.augment=true"]}


def _stage_status(run_dir: Path) -> dict:
    return {k: v["status"] for k, v in json.loads((run_dir / "manifest.json").read_text())["stages"].items()}


def _metric_steps(path: Path) -> dict:
    """For every metric column of a metrics.csv, the steps it was logged at."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c not in ("epoch", "step")]
    return {c: [int(r["step"]) for r in rows if r[c]] for c in columns}


@pytest.fixture(scope="module", params=list(VARIANTS))
def uninterrupted(request, tmp_path_factory, cifar_root):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    args = [*TINY, *VARIANTS[request.param]]
    proc = cli(cifar_root, *args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return args, run_dir


def test_killed_in_pretraining_and_in_the_linear_probe_resumes_to_the_uninterrupted_run(tmp_path, cifar_root,
                                                                                       uninterrupted):
    args, reference = uninterrupted
    run_dir = tmp_path / "run"
    assert cli_killed_when(cifar_root, run_dir, "pretrain/checkpoints/last.ckpt", *args) == -9
    assert _stage_status(run_dir) == {"pretrain": "running"}  # killed inside pretraining
    # The rerun resumes pretraining from epoch 1 and is killed again inside the linear probe.
    assert cli_killed_when(cifar_root, run_dir, "linear/checkpoints/last.ckpt", *args) == -9
    assert _stage_status(run_dir) == {"pretrain": "done", "knn": "done", "linear": "running"}
    proc = cli(cifar_root, *args, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    resumed, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert resumed["stages"]["pretrain"]["resumed_from"] == "pretrain/checkpoints/last.ckpt"
    assert resumed["stages"]["linear"]["resumed_from"] == "linear/checkpoints/last.ckpt"
    assert figures(resumed) == figures(expected)
    encoders = [torch.load(d / "pretrain/encoder.pt", weights_only=True)["backbone"] for d in (run_dir, reference)]
    assert all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[1])
    # The killed epochs' rows are gone: no metric twice at a step, every step row there. (An
    # epoch's means are logged just after its checkpoint: the kill, right then, may lose that row.)
    for stage in ("pretrain", "linear"):
        steps, expected_steps = (_metric_steps(d / stage / "metrics.csv") for d in (run_dir, reference))
        assert all(len(set(s)) == len(s) and set(s) <= set(expected_steps[c]) for c, s in steps.items())
        assert steps.get("train/loss_step") == expected_steps.get("train/loss_step")


class CrashAt(Callback):
    """Raises once the trainer reaches `hook` at `epoch` (0-based)."""

    def __init__(self, hook: str, epoch: int) -> None:
        self.hook, self.epoch = hook, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if self.hook == "epoch_start" and trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")

    def on_train_end(self, trainer, pl_module):
        if self.hook == "train_end":
            raise RuntimeError("simulated crash")


PRETRAIN_ONLY = [*TINY, "pipeline=pretrain"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, cifar_root):
    """An uninterrupted pretrain-only run, in this process."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
        return run_pipeline(compose_config(PRETRAIN_ONLY), tmp_path_factory.mktemp("pretrained"))


@pytest.fixture
def data_env(monkeypatch, cifar_root):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))


def test_a_stage_killed_after_its_last_checkpoint_keeps_its_figures(tmp_path, pretrained, data_env):
    """Nothing is left to train on the rerun; the figures come back from the
    checkpoint (they used to be read from the last attempt's trainer)."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(compose_config(PRETRAIN_ONLY), tmp_path, callbacks=[CrashAt("train_end", 0)])
    summary = run_pipeline(compose_config(PRETRAIN_ONLY), tmp_path)
    assert summary["stages"]["pretrain"]["resumed_from"] == "pretrain/checkpoints/last.ckpt"
    assert figures(summary) == figures(pretrained)
    assert {"loss", "online_probe_top1", "knn_monitor_top1", "embedding_std"} <= set(figures(summary)["pretrain"])
    assert summary["stages"]["pretrain"]["seconds"] > 0  # summed over the attempts


class Marker:
    """A pickle that would create a file if it were ever unpickled with code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("damage", ["truncated", "planted pickle"])
def test_an_unreadable_checkpoint_is_set_aside_and_the_stage_restarts(tmp_path, pretrained, data_env, damage):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(compose_config(PRETRAIN_ONLY), run_dir, callbacks=[CrashAt("epoch_start", 1)])
    ckpt = run_dir / "pretrain/checkpoints/last.ckpt"
    marker = tmp_path / "code_ran"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        ckpt.write_bytes(pickle.dumps({"state_dict": Marker(marker), "epoch": 0}))
    orphan = ckpt.with_name(".last.ckpt.tmp.4242")  # what a writer killed mid-write leaves
    orphan.write_bytes(b"partial")

    summary = run_pipeline(compose_config(PRETRAIN_ONLY), run_dir)
    assert not marker.exists()
    assert (run_dir / "pretrain/checkpoints/last.ckpt.unreadable").is_file() and not orphan.exists()
    assert "resumed_from" not in summary["stages"]["pretrain"]  # restarted from scratch ...
    assert figures(summary) == figures(pretrained)  # ... which gives the uninterrupted result
