"""The pipeline in-process on real CIFAR-10: an interrupted pretraining is
resumed from its last checkpoint; loading is strict; the online probe cannot
change the encoder."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import compose_config
from ssl_runner.encoder import load_encoder
from ssl_runner.errors import UserError
from ssl_runner.methods import build_method
from ssl_runner.pipeline import run_pipeline

pytestmark = pytest.mark.integration

SMALL = ["experiment=smoke", "data.subset=400", "data.test_subset=200", "data.batch_size=100",
         "eval.linear.epochs=2", "eval.random_baseline=false", "monitor.knn_every_n_epochs=0", "pipeline.plots=false"]


class CrashAfterEpoch(Callback):
    """Simulates a crash (a pre-empted job) once `epoch` epochs are saved."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epoch:
            # Let the checkpoint of this epoch be written first.
            trainer.should_stop = True
            self.crash = True

    def on_train_end(self, trainer, pl_module):
        if getattr(self, "crash", False):
            raise RuntimeError("simulated crash")


def test_interrupted_pretraining_resumes_from_its_last_checkpoint(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    cfg = compose_config(SMALL + ["trainer.max_epochs=3"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(cfg, tmp_path, callbacks=[CrashAfterEpoch(1)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["pretrain"]["status"] == "failed"
    ckpt = torch.load(tmp_path / "pretrain/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 4  # 400 images / batch 100, one epoch

    summary = run_pipeline(cfg, tmp_path)
    pretrain = summary["stages"]["pretrain"]
    assert pretrain["status"] == "done" and pretrain["resumed_from"] == "pretrain/checkpoints/last.ckpt"
    assert pretrain["epochs"] == 3
    ckpt = torch.load(tmp_path / "pretrain/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12  # 3 epochs x 4 steps: the resumed run did only the missing ones
    with open(tmp_path / "pretrain/metrics.csv") as fh:
        epochs = sorted({int(r["epoch"]) for r in csv.DictReader(fh) if r.get("train/loss_epoch")})
    assert epochs == [0, 1, 2]
    assert summary["stages"]["linear"]["status"] == "done"


def test_encoder_loads_strictly(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    cfg = compose_config(SMALL)
    method = build_method(cfg, num_classes=10)
    path = tmp_path / "encoder.pt"
    method.export_encoder(path)
    loaded = load_encoder(path)
    for key, value in method.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value)
    data = torch.load(path, weights_only=True)
    data["backbone"].pop("layer1.0.conv1.weight")
    torch.save(data, path)
    with pytest.raises(UserError, match="layer1.0.conv1.weight"):
        load_encoder(path)


def test_online_probe_leaves_encoder_gradients_unchanged(cifar_root, monkeypatch):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    cfg = compose_config(SMALL)
    torch.manual_seed(0)
    method = build_method(cfg, num_classes=10)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    labels = torch.randint(0, 10, (8,))

    def encoder_grads(with_probe: bool):
        method.zero_grad()
        out = method.ssl_step(views, torch.arange(8))
        loss = out.loss
        if with_probe:
            loss = loss + method.online_probe_loss(out.features, labels)[0]
        loss.backward()
        return {n: p.grad.clone() for n, p in method.backbone.named_parameters()}

    torch.manual_seed(1)
    without = encoder_grads(False)
    torch.manual_seed(1)
    with_probe = encoder_grads(True)
    assert all(torch.equal(without[n], with_probe[n]) for n in without)
    assert method.online_probe.weight.grad is not None and method.online_probe.weight.grad.abs().sum() > 0
