"""scripts/profile_train_step.py: where a training step's time goes, and the
ceiling that our convolutions put on the ratio against lightly (issue 20)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "profile_train_step.py"


def load_script():
    spec = importlib.util.spec_from_file_location("profile_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_steps_seconds_split_by_op_name_add_up_to_the_step():
    script = load_script()
    by_op = {"aten::mkldnn_convolution": 3.0, "aten::convolution_backward": 6.0, "aten::convolution": 0.5,
             "aten::native_batch_norm": 0.25, "aten::native_batch_norm_backward": 0.5, "aten::relu_": 0.1}
    grouped = script.grouped_seconds(by_op, step_seconds=12.0)
    assert grouped == {"convolutions": 9.5, "batch norm": 0.75, "the rest": 1.75}


def test_the_ceiling_is_the_peers_time_per_batch_over_our_convolutions():
    script = load_script()
    ours = {"step": 10.0, "convolutions": 8.0, "between steps": 0.5}
    peer = {"step": 12.0, "convolutions": 9.0, "between steps": 2.0}
    bound = script.ceiling(ours, peer)
    assert bound["ratio_now"] == pytest.approx(14.0 / 10.5)
    assert bound["ceiling"] == pytest.approx(14.0 / 8.0)


@pytest.mark.integration
def test_one_profiled_step_of_ours_on_real_images(cifar_root):
    env = {**os.environ, "SSL_RUNNER_DATA": str(cifar_root.parent)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--side", "ours", "--backbone", "resnet_tiny",
                           "--batch", "16", "--warmup", "1", "--steps", "1", "--precision", "32-true"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    # The profiler saw the backbone's convolutions and batch norms inside the step.
    assert 0 < figures["convolutions"] < figures["step"] and figures["batch norm"] > 0
    assert figures["convolutions"] + figures["batch norm"] + figures["the rest"] == pytest.approx(figures["step"])
    assert figures["between steps"] > 0
