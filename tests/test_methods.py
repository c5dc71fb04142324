"""MoCo, SimSiam, BYOL and NPID in training on real CIFAR-10: momentum
updates only through the EMA, queues and banks restored on resume, the
collapse that SimSiam's stop-gradient prevents."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import compose_config
from lightning.pytorch.callbacks import Callback

from ssl_runner.data.datasets import load_split
from ssl_runner.data.loaders import pretrain_loader
from ssl_runner.methods import build_method

pytestmark = pytest.mark.integration


def _setup(cifar_root, method, *overrides, subset=256, batch=64):
    cfg = compose_config([f"method={method}", "experiment=smoke", f"data.root={cifar_root}", f"data.subset={subset}",
                          f"data.batch_size={batch}", "monitor.knn_every_n_epochs=0", *overrides])
    images = load_split(cfg.data, "train", cfg.seed)
    torch.manual_seed(0)
    module = build_method(cfg, len(images.classes), len(images))
    return cfg, module, pretrain_loader(cfg.data, images, module.view_maker, batch_size=cfg.data.batch_size)


def _trainer(tmp_path, batches, epochs=1, callbacks=()):
    return L.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=batches, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                     callbacks=list(callbacks), enable_checkpointing=False, num_sanity_val_steps=0)


class Snapshot(Callback):
    """Momentum-copy parameters before each optimizer step and online ones after."""

    def __init__(self, target: str, online) -> None:
        self.target, self.online, self.records = target, online, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = [p.detach().clone() for p in getattr(module, self.target).net.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = [p.detach().clone() for p in getattr(module, self.target).net.parameters()]
        online = [p.detach().clone() for p in self.online(module).parameters()]
        self.records.append((self.before, after, online))


@pytest.mark.parametrize("method,target", [("mocov2", "key_encoder"), ("byol", "target"), ("looc", "key_encoder")])
def test_momentum_copy_changes_only_by_the_ema_of_the_updated_online_network(cifar_root, tmp_path, method, target):
    cfg, module, loader = _setup(cifar_root, method, "method.momentum=0.9", "method.momentum_schedule=constant")
    snap = Snapshot(target, lambda m: torch.nn.Sequential(m.backbone, m.projector))
    _trainer(tmp_path, batches=2, callbacks=[snap]).fit(module, loader)
    assert len(snap.records) == 2
    for before, after, online_after in snap.records:
        for b, a, o in zip(before, after, online_after):
            torch.testing.assert_close(a, 0.9 * b + 0.1 * o)
    assert all(not p.requires_grad for p in getattr(module, target).parameters())


def test_moco_queue_holds_the_last_keys_and_comes_back_on_resume(cifar_root, tmp_path):
    cfg, module, loader = _setup(cifar_root, "mocov2", "method.queue_size=300")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        num_sanity_val_steps=0)
    trainer.fit(module, loader)
    # 2 steps x 64 images x 2 views (symmetric) = 256 keys into a queue of 300.
    assert int(module.queue.ptr) == 256
    ckpt = tmp_path / "moco.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert torch.equal(state["queue.keys"], module.queue.keys)
    _, fresh, loader = _setup(cifar_root, "mocov2", "method.queue_size=300")
    assert not torch.equal(fresh.queue.keys, module.queue.keys)
    L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0
              ).fit(fresh, loader, ckpt_path=str(ckpt))  # already finished: restores, trains nothing
    assert torch.equal(fresh.queue.keys, module.queue.keys) and int(fresh.queue.ptr) == int(module.queue.ptr)


@pytest.mark.parametrize("noise_samples", [0, 64])  # exact softmax over the bank, NCE
def test_npid_memory_bank_takes_the_batch_features(cifar_root, tmp_path, noise_samples):
    cfg, module, loader = _setup(cifar_root, "npid", "method.bank_momentum=0.5",
                                 f"method.noise_samples={noise_samples}")
    before = module.memory.bank.clone()
    _trainer(tmp_path, batches=1).fit(module, loader)
    changed = (module.memory.bank != before).any(dim=1)
    assert int(changed.sum()) == 64  # exactly the batch's rows
    assert torch.allclose(module.memory.bank.norm(dim=1), torch.ones(256))
    assert torch.isfinite(module.log_normaliser) == (noise_samples > 0)  # Z is estimated for NCE only


def test_npid_estimates_its_nce_normaliser_over_the_positive_and_the_noise_columns():
    """NPID's code (lemniscate.pytorch, NCEAverage): Z = N x the mean of exp(v.f / tau)
    over the first batch's K + 1 columns, the positive's included. Each image's
    bank row here is its own feature, so the positives score 1 / tau, far above
    the noise: leaving them out would move log Z by more than 1."""
    cfg = compose_config(["method=npid", "experiment=smoke", "method.noise_samples=5", "method.temperature=0.2"])
    torch.manual_seed(0)
    module = build_method(cfg, 10, num_samples=40)
    x, indices = torch.randn(4, 3, 32, 32), torch.tensor([3, 17, 22, 38])
    with torch.no_grad():
        f = torch.nn.functional.normalize(module.embed(module.backbone(x)), dim=1)
        module.memory.bank[indices] = f
    bank = module.memory.bank.clone()
    torch.manual_seed(1)
    out = module.ssl_step([x], indices)
    torch.manual_seed(1)
    noise = torch.randint(0, 40, (4, 5))  # ssl_step's draw
    torch.testing.assert_close(out.embeddings, f)
    logits = torch.cat([(bank[indices] * f).sum(1, keepdim=True), torch.einsum("nkd,nd->nk", bank[noise], f)], 1)
    exp = (logits.double() / 0.2).exp()
    assert float(module.log_normaliser) == pytest.approx(math.log(40 * float(exp.mean())), abs=1e-5)
    assert abs(float(module.log_normaliser) - math.log(40 * float(exp[:, 1:].mean()))) > 1.0


def _collapse_run(cifar_root, tmp_path, stop_gradient: bool) -> tuple[float, float]:
    """(std of normalised z, loss) after 48 steps of a small SimSiam at lr 0.5."""
    cfg, module, loader = _setup(cifar_root, "simsiam", f"method.stop_gradient={str(stop_gradient).lower()}",
                                 "method.proj_hidden_dim=256", "method.proj_output_dim=256",
                                 "method.pred_hidden_dim=64", "optimizer=sgd", "optimizer.lr=0.5",
                                 "scheduler=constant", "scheduler.warmup_epochs=0", "monitor.online_probe=false",
                                 subset=256, batch=64)
    _trainer(tmp_path, batches=4, epochs=12).fit(module, loader)
    metrics = module.trainer.callback_metrics
    return float(metrics["train/embedding_std"]), float(metrics["train/loss_epoch"])


def test_simsiam_collapses_without_the_stop_gradient_and_not_with_it(cifar_root, tmp_path):
    """Sec. 4.1: without stop-gradient the loss runs to its minimum -1 and the
    std of the normalised outputs z falls towards 0; with it, the std stays
    near 1/sqrt(d) (d = 256 here: 0.0625)."""
    healthy_std, healthy_loss = _collapse_run(cifar_root, tmp_path, stop_gradient=True)
    collapsed_std, collapsed_loss = _collapse_run(cifar_root, tmp_path, stop_gradient=False)
    assert healthy_std > 0.7 / 256 ** 0.5
    assert collapsed_std < 0.5 * healthy_std, (collapsed_std, healthy_std)
    assert collapsed_loss < -0.85 and collapsed_loss < healthy_loss - 0.2, (collapsed_loss, healthy_loss)


# One process, the whole chain, for the method no other test runs so: MoCo v2
# (test_distributed's queue test), SimSiam, BYOL and NPID run the chain on two
# processes (test_distributed), the other methods in their own test files.
@pytest.mark.parametrize("method", ["mocov1"])
def test_smoke_preset_completes_for_every_method(cifar_root, tmp_path, method):
    """The issue's command for each method: exit 0 and a complete summary."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SSL_RUNNER_DATA": str(cifar_root.parent), "CI": "true"}
    run_dir = tmp_path / f"m-{method}"
    proc = subprocess.run([sys.executable, "-m", "ssl_runner", f"method={method}", "data=cifar10", "experiment=smoke",
                           "pipeline.plots=false", f"hydra.run.dir={run_dir}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == method
    assert all(summary["stages"][s]["status"] == "done" for s in ("pretrain", "knn", "linear"))
    assert summary["baseline"]["knn_random_init"]["status"] == "done"
    assert 10.0 < summary["stages"]["knn"]["top1"] <= 100.0
    # The exported encoder holds the backbone and heads, not the momentum state.
    encoder = torch.load(run_dir / "pretrain" / "encoder.pt", weights_only=True)
    assert not any(k.startswith(("target.", "key_encoder.", "queue.", "memory.")) for k in encoder["heads"])
