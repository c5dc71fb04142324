"""scripts/gpu_check.py in its reduced CPU form, as CI runs it, so that the
GPU check a lent device gets is known to run (issue 19)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
CHECKS = ["wheels", "environment", "cuda_tests", "ddp_sync_batchnorm", "throughput", "image_folder", "short_run"]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def no_nan(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(no_nan(v) for v in value.values())
    if isinstance(value, list):
        return all(no_nan(v) for v in value)
    return True


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form; a GPU runs the measured form")
def test_cpu_form_runs_every_check_and_records_its_figures(cifar_root, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "SSL_RUNNER_DATA": str(cifar_root.parent), "CI": "true"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[gpu-check] ")]
    # One line per check, in order, then the summary.
    assert [line.split(":")[0].split()[-1] for line in lines] == CHECKS + ["summary"]
    assert "CUDA-only parts are skipped" in lines[1]
    report = json.loads(out.read_text())
    assert report["form"] == "cpu" and no_nan(report)
    statuses = {name: check["status"] for name, check in report["checks"].items()}
    assert statuses == {"wheels": "skip", "environment": "pass", "cuda_tests": "skip",
                        "ddp_sync_batchnorm": "pass", "throughput": "pass", "image_folder": "pass",
                        "short_run": "pass"}
    assert report["counts"] == {"pass": 5, "fail": 0, "skip": 2}
    figures = {name: check["figures"] for name, check in report["checks"].items()}
    # The DDP launch converted the BatchNorm layers (GlobalBatchNorm on the CPU).
    assert figures["ddp_sync_batchnorm"]["synchronised_batchnorm_layers"] > 0
    assert 0 < figures["ddp_sync_batchnorm"]["knn_top1"] <= 100
    assert figures["throughput"]["ours"]["images_per_second"] > 0
    assert figures["throughput"]["ours"]["gpu_busy_percent"] is None  # no GPU to be busy
    # Views of 64 photographs made from their bytes (views_on=device, here on the CPU) and by a CPU worker.
    assert figures["image_folder"]["files"] == 64
    image_folder = figures["image_folder"]
    assert image_folder["device_images_per_second"] > 0 and image_folder["cpu_worker_images_per_second"] > 0
    assert figures["short_run"]["epochs"] == 1 and 0 < figures["short_run"]["knn_top1"] <= 100
    assert "experiment=simclr_cifar10_fast" in figures["short_run"]["command"]


def test_a_missing_wheel_folder_fails_the_check(tmp_path):
    gpu_check = load_script()
    (tmp_path / "empty").mkdir()
    args = gpu_check.parse(["--wheels", str(tmp_path / "empty"), "--out", str(tmp_path / "out.json")])
    check = gpu_check.GpuCheck(args)
    outcome = check.wheels()
    assert outcome.status == "fail" and "no .whl file" in outcome.detail
    assert not check.work.exists()  # only `main` makes its folder, and removes it


def test_json_is_written_whole_and_without_nan(tmp_path):
    gpu_check = load_script()
    path = tmp_path / "figures.json"
    gpu_check.write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.5}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2.5}}
    assert not list(tmp_path.glob("*.partial"))
