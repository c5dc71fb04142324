"""The pretrain stage's monitors (ssl_runner/monitors.py): the kNN monitor
logs the kNN and online-probe accuracy of the method's eval-mode features,
every image counted once; the clock keeps the first step's time."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import compose_config

from ssl_runner.data.datasets import ImageSet
from ssl_runner.data.loaders import eval_loader
from ssl_runner.eval.knn import knn_top1
from ssl_runner.methods import build_method
from ssl_runner.monitors import FirstStepClock, KnnMonitor, pretrain_callbacks, seconds_to_first_step


def _images(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(labels=torch.arange(n) % 10, classes=[str(c) for c in range(10)],
                    images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g))


def test_knn_monitor_logs_knn_and_probe_accuracy_of_the_eval_features(tmp_path):
    cfg = compose_config(["method=simclr", "experiment=smoke", "trainer.channels_last=false",
                          "data.eval_batch_size=16", "eval.knn.k=5"])
    torch.manual_seed(0)
    method = build_method(cfg, 10, 48)
    loaders = [eval_loader(cfg.data, _images(48, seed=0)), eval_loader(cfg.data, _images(24, seed=1))]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), callbacks=[KnnMonitor(cfg.eval.knn, 10)])
    trainer.validate(method, dataloaders=loaders, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    trainer.validate(method, dataloaders=loaders, verbose=False)  # a second pass starts afresh
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == logged

    method.eval()
    splits = []
    with torch.no_grad():
        for loader in loaders:
            batches = [method.on_after_batch_transfer(batch, 0) for batch in loader]
            splits.append((torch.cat([method.backbone(x) for x, _, _ in batches]),
                           torch.cat([y for _, y, _ in batches])))
        (train_f, train_y), (test_f, test_y) = splits
        probe = (method.online_probe(test_f).argmax(1) == test_y).float().mean() * 100
    assert logged["val/knn_top1"] == pytest.approx(knn_top1(train_f, train_y, test_f, test_y, 10, 5, 0.1))
    assert logged["val/probe_top1"] == pytest.approx(float(probe))


def test_first_step_clock_keeps_the_first_steps_time():
    clock = next(c for c in pretrain_callbacks(compose_config(["method=simclr"]), 10) if isinstance(c, FirstStepClock))
    assert clock.seconds is None
    clock.on_train_batch_end(None, None, None, None, 0)
    first = clock.seconds
    assert first is not None and first > 0
    clock.on_train_batch_end(None, None, None, None, 1)
    assert clock.seconds == first

    class _Trainer:
        callbacks = [KnnMonitor(compose_config(["method=simclr"]).eval.knn, 10), clock]

    assert seconds_to_first_step(_Trainer()) == first
