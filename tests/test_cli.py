"""The command line on real CIFAR-10: the smoke preset end to end, rerun
skipping, evaluation of an existing checkpoint, multirun, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from conftest import without_plots

pytestmark = pytest.mark.integration


def run_cli(args: List[str], cwd: Path, data: Path | str, timeout: int = 400, extra_env=None):
    env = {**os.environ, "SSL_RUNNER_DATA": str(data), "CI": "true", "PYTHONUNBUFFERED": "1"}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "ssl_runner", *without_plots(args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(cifar_root: Path) -> Path:
    return cifar_root.parent


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, data_dir):
    """One smoke run shared by the checks below (it is the expensive part)."""
    work = tmp_path_factory.mktemp("cli")
    run_dir = work / "r1"
    proc = run_cli(["method=simclr", "data=cifar10", "experiment=smoke", f"hydra.run.dir={run_dir}"], work, data_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, run_dir, proc


def test_smoke_run_writes_a_complete_summary(smoke_run):
    _, run_dir, _ = smoke_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["method"], summary["data"], summary["backbone"], summary["seed"]) == (
        "simclr", "cifar10", "resnet_tiny", 0)
    assert summary["train_images"] == 2000 and summary["epochs"] == 2 and summary["batch_size"] == 128
    pretrain = summary["stages"]["pretrain"]
    assert pretrain["status"] == "done" and pretrain["epochs"] == 2
    # NT-Xent with 2N-2 = 254 negatives starts near log(255) = 5.54 and must fall below it.
    assert math.isfinite(pretrain["loss"]) and 0 < pretrain["loss"] < math.log(255)
    assert pretrain["seconds"] > 0 and pretrain["checkpoint"] == "pretrain/checkpoints/last.ckpt"
    for stage in ("knn", "linear"):
        assert summary["stages"][stage]["status"] == "done"
        # Ten classes: chance is 10 %; even two epochs of a tiny net clear it.
        assert 15.0 < summary["stages"][stage]["top1"] <= 100.0
    assert summary["stages"]["linear"]["epochs"] == 5
    assert summary["stages"]["knn"]["test_images"] == 1000
    assert 10.0 < summary["baseline"]["knn_random_init"]["top1"] <= 100.0
    # The linear floor: the same probe on the untrained encoder, same epochs, same features.
    floor = summary["baseline"]["linear_random_init"]
    assert (floor["epochs"], floor["features"]) == (5, "cached, unaugmented, standardised") and 10.0 < floor["top1"] <= 100.0


def test_smoke_run_folder_layout(smoke_run):
    _, run_dir, _ = smoke_run
    for rel in ("config.yaml", "manifest.json", "ssl_runner.log", ".hydra/config.yaml", "pretrain/encoder.pt",
                "pretrain/checkpoints/last.ckpt", "pretrain/metrics.csv", "linear/checkpoints/last.ckpt",
                "linear/metrics.csv", "knn/metrics.csv"):
        assert (run_dir / rel).is_file(), rel
    header, *rows = (run_dir / "pretrain" / "metrics.csv").read_text().splitlines()
    for column in ("train/loss_epoch", "train/embedding_std", "train/probe_top1", "val/knn_top1", "train/lr"):
        assert column in header.split(","), column
    epochs = {row.split(",")[header.split(",").index("epoch")] for row in rows}
    assert {"0", "1"} <= epochs
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["encoder"] == "pretrain/encoder.pt"
    assert manifest["stages"]["knn"]["checkpoint"].endswith("pretrain/encoder.pt")


def test_rerun_skips_finished_stages_and_touches_nothing(smoke_run, data_dir):
    work, run_dir, _ = smoke_run
    ckpt = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    before = (ckpt.stat().st_mtime_ns, json.loads((run_dir / "summary.json").read_text())["stages"])
    proc = run_cli(["method=simclr", "data=cifar10", "experiment=smoke", f"hydra.run.dir={run_dir}"], work, data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("already done") == 5  # pretrain, knn, linear, the two baselines
    after = (ckpt.stat().st_mtime_ns, json.loads((run_dir / "summary.json").read_text())["stages"])
    assert after == before


def test_rerun_with_another_config_in_the_same_folder_is_refused(smoke_run, data_dir):
    work, run_dir, _ = smoke_run
    ckpt = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    proc = run_cli(["method=simclr", "experiment=smoke", "optimizer.lr=9.0", f"hydra.run.dir={run_dir}"], work,
                   data_dir)
    assert proc.returncode == 2
    assert "different config" in proc.stderr and "optimizer.lr" in proc.stderr
    assert ckpt.stat().st_mtime_ns == mtime


def test_eval_pipeline_on_an_existing_checkpoint_reproduces_knn(smoke_run, data_dir):
    """The config names another backbone and image size: the encoder is
    evaluated as it was trained, and the random-init floor is built like it."""
    work, run_dir, _ = smoke_run
    encoder = run_dir / "pretrain" / "encoder.pt"
    out = work / "eval"
    proc = run_cli(["pipeline=eval", f"checkpoint={encoder}", "experiment=smoke", "backbone=resnet18",
                    "data.image_size=40", f"hydra.run.dir={out}"], work, data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "pretrain" not in summary["stages"]
    assert (summary["backbone"], summary["image_size"]) == ("resnet_tiny", 32)
    original = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"]["knn"]["top1"] == pytest.approx(original["stages"]["knn"]["top1"], abs=0.01)
    assert summary["baseline"]["knn_random_init"] == original["baseline"]["knn_random_init"]


def test_unknown_method_lists_the_available_ones(tmp_path, data_dir):
    proc = run_cli(["method=nosuch", "data=cifar10"], tmp_path, data_dir, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "simclr" in proc.stderr and "method/nosuch" in proc.stderr


def test_misspelt_cli_key_is_named(tmp_path, data_dir):
    proc = run_cli(["experiment=smoke", "optimizer.lrr=0.1"], tmp_path, data_dir, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    # Hydra's own advice, to add a `+`, would add the typo.
    assert "unknown config key 'optimizer.lrr'. Did you mean 'optimizer.lr'?" in message and "+optimizer" not in message
    proc = run_cli(["experiment=smoke", "+data.subsett=10"], tmp_path, data_dir, timeout=120)
    assert proc.returncode == 2 and "data.subsett" in proc.stderr and "data.subset" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


def test_missing_dataset_is_a_clear_error(tmp_path):
    missing = tmp_path / "nonexistent"
    proc = run_cli(["experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, missing, timeout=120)
    assert proc.returncode == 2
    assert "SSL_RUNNER_DATA" in proc.stderr and str(missing / "cifar10") in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
    assert not missing.exists()  # a failed download leaves nothing behind


def test_unreadable_checkpoint_and_oversized_batch_are_clear_errors(tmp_path, data_dir):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli(["pipeline=eval", f"checkpoint={bad}", "experiment=smoke", f"hydra.run.dir={tmp_path / 'a'}"],
                   tmp_path, data_dir, timeout=120)
    assert proc.returncode == 2 and "could not read checkpoint" in proc.stderr
    proc = run_cli(["experiment=smoke", "data.subset=100", "data.batch_size=128", f"hydra.run.dir={tmp_path / 'b'}"],
                   tmp_path, data_dir, timeout=120)
    assert proc.returncode == 2 and "larger than the training set" in proc.stderr.replace("\n", " ")


def test_multirun_gives_each_job_its_own_folder_and_summary(tmp_path, data_dir):
    import time

    start = time.monotonic()
    proc = run_cli(["-m", "method=simclr", "optimizer.lr=0.1,0.3", "experiment=smoke", "data.subset=600",
                    "data.test_subset=200", "trainer.max_epochs=1", "eval.linear.epochs=1",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, data_dir)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    lrs = set()
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["stages"]["linear"]["status"] == "done"
        lrs.add(json.loads((path.parent / "manifest.json").read_text())["config"]["optimizer"]["lr"])
    assert lrs == {0.1, 0.3}
    # Each job's wall time is its own: the second does not count the first's.
    walls = [json.loads(p.read_text())["wall_seconds"] for p in summaries]
    assert all(w > 0 for w in walls) and sum(walls) <= elapsed
    # The sweep's results table: one row per job, with the figures of its summary.
    table = (tmp_path / "sweep" / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| simclr |")]
    assert len(rows) == 2 and table[2].startswith("| method | backbone |")
    linear = sorted(f"{json.loads(p.read_text())['stages']['linear']['top1']:.2f}" for p in summaries)
    column = table[2].split(" | ").index("linear top-1")
    assert sorted(row.split(" | ")[column] for row in rows) == linear


def test_help_describes_the_runner_its_methods_presets_and_groups(tmp_path, data_dir):
    import re

    import ssl_runner.methods  # noqa: F401  (registers every method)
    from ssl_runner.__main__ import config_dir
    from ssl_runner.methods.registry import METHOD_INFO

    proc = run_cli(["--help"], tmp_path, data_dir)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    sections = dict(re.findall(r"^== (.+?) ==\n(.*?)(?=^== |\Z)", text, re.M | re.S))
    # The description comes first, and says what runs on a machine without a GPU.
    description = " ".join(text.split("== Examples ==")[0].split())
    assert "pretrains an encoder without labels" in description and "one run folder" in description
    assert re.search(r"without a GPU, a command that names no experiment runs the cifar10_cpu preset", description)
    examples = sections["Examples"]
    for example in ("method=simclr data=cifar10", "experiment=smoke", "experiment=simclr_cifar10", " -m ",
                    "pipeline=eval checkpoint=", "hydra.run.dir="):
        assert example in examples, example
    # Every registered method, with its paper and kind, in the registry's order.
    methods = [line.split()[0] for line in sections["Methods (method=NAME: paper - kind)"].splitlines() if line]
    assert methods == list(METHOD_INFO)
    for name, info in METHOD_INFO.items():
        assert re.search(rf"^  {name} +{re.escape(info.paper)} - {info.kind}$", text, re.M), name
    # Every preset (not the per-method adjustment folders) with its first comment line's description and cost.
    conf = Path(config_dir())
    preset_files = sorted((conf / "experiment").glob("*.yaml"))
    listed = sections["Presets (experiment=NAME)"].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in listed if not line.startswith("   ")] == [p.stem for p in preset_files]
    presets = " ".join(sections["Presets (experiment=NAME)"].split())
    for path in preset_files:
        first = next(line for line in path.read_text().splitlines() if line.startswith("#") and "@package" not in line)
        assert "; " in first, f"{path.name}: its first comment line is not '# <description>; <cost>'"
        what, cost = first.lstrip("# ").split("; ", 1)
        assert f"{path.stem} {what}. Cost: {cost}." in presets, path.name
    # The groups a user chooses, with exactly their options; not Hydra's, nor settings with one option.
    lines = sections["Configuration groups"].split("\n\n")[1]
    groups = dict(line.split(": ", 1) for line in re.sub(r"\n    ", " ", lines).splitlines())
    truth = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in conf.iterdir() if d.is_dir()}
    chosen = {g: o for g, o in truth.items() if g not in ("hydra", "expected") and o and o != ["default"]}
    assert {g: sorted(o.replace(" (default)", "") for o in opts.split(", ")) for g, opts in groups.items()} == chosen
    assert "resnet18 (default)" in groups["backbone"] and "hydra" not in groups and "eval" not in groups
    assert "Override anything in the config (foo.bar=value)" in sections["Config"]
