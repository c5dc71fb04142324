"""DataLoaders over real CIFAR-10: whole-batch fetching returns the right
images, labels and indices, in every loader kind."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import load_split
from ssl_runner.data.loaders import (DeviceBatches, InMemoryBatches, eval_loader, labelled_train_loader,
                                       pretrain_loader)
from ssl_runner.views.recipe import ViewRecipe


def _images(cifar_root, **kw):
    cfg = OmegaConf.structured(DataConfig(root=str(cifar_root), subset=100, batch_size=32, eval_batch_size=40, **kw))
    return cfg, load_split(cfg, "train", seed=0)


def test_in_memory_pretraining_batches_are_fetched_whole_and_match_their_indices(cifar_root):
    cfg, images = _images(cifar_root)
    recipe = ViewRecipe.simclr(size=32, mean=list(cfg.mean), std=list(cfg.std), num_views=2)
    loader = pretrain_loader(cfg, images, recipe, batch_size=cfg.batch_size)
    assert isinstance(loader.dataset, InMemoryBatches)
    seen = []
    for x, y, idx in loader:
        assert x.dtype == torch.uint8 and x.shape == (32, 3, 32, 32)
        assert torch.equal(x, images.images[idx]) and torch.equal(y, images.labels[idx])
        seen.append(idx)
    seen = torch.cat(seen)
    assert len(seen) == 96 and len(seen.unique()) == 96  # shuffled, no repeats, last partial batch dropped
    assert not torch.equal(seen, seen.sort().values)


def test_eval_and_labelled_loaders_keep_order_and_pairing(cifar_root):
    cfg, images = _images(cifar_root)
    batches = list(eval_loader(cfg, images))
    assert [len(b[0]) for b in batches] == [40, 40, 20]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, images.images) and torch.equal(torch.cat([b[2] for b in batches]), torch.arange(100))
    recipe = ViewRecipe.simclr(size=32, mean=list(cfg.mean), std=list(cfg.std))
    for x, y, idx in labelled_train_loader(cfg, images, recipe, batch_size=25):
        assert torch.equal(x, images.images[idx]) and torch.equal(y, images.labels[idx])
    # Views made per image in workers: lists of float views, labels still paired.
    cfg_cpu = OmegaConf.merge(cfg, {"views_on": "cpu"})
    pairs = ViewRecipe.simclr(size=32, mean=list(cfg.mean), std=list(cfg.std), num_views=2)
    views, y, idx = next(iter(pretrain_loader(cfg_cpu, images, pairs, batch_size=cfg.batch_size)))
    assert len(views) == 2 and views[0].dtype == torch.float32 and torch.equal(y, images.labels[idx])
    # A supervised stage trains on one view per image: a pair maker is refused.
    with pytest.raises(ValueError, match="one view per image"):
        labelled_train_loader(cfg_cpu, images, pairs, batch_size=25)


def test_device_batches_are_the_dataloaders_batches_across_epochs_and_a_mid_epoch_resume(cifar_root, monkeypatch):
    """The GPU's loader without a DataLoader (DeviceBatches), played on the CPU:
    batch for batch what the DataLoader over InMemoryBatches gives, in every
    epoch, with repeats (Exemplar-CNN), on a rank of two, and resumed mid-epoch."""
    cfg, images = _images(cifar_root)
    recipe = ViewRecipe.simclr(size=32, mean=list(cfg.mean), std=list(cfg.std), num_views=2)
    kwargs = dict(batch_size=16, repeats=2, seed=3, rank=1, world_size=2)
    reference = pretrain_loader(cfg, images, recipe, **kwargs)
    monkeypatch.setattr("ssl_runner.data.loaders.holds_images_on_device", lambda device, images: True)
    on_device = pretrain_loader(cfg, images, recipe, device=torch.device("cpu"), **kwargs)
    assert isinstance(on_device, DeviceBatches) and len(on_device) == len(reference) == 6
    epochs = []
    for epoch in (0, 1):
        for loader in (reference, on_device):
            loader.sampler.set_epoch(epoch)
        ours, theirs = list(on_device), list(reference)
        assert len(ours) == len(theirs) == 6
        for a, b in zip(ours, theirs):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        epochs.append(torch.cat([b[2] for b in ours]))
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch
    for loader in (reference, on_device):
        loader.sampler.resume_within_epoch(1, 2 * 16)
    ours, theirs = list(on_device), list(reference)
    assert len(ours) == len(theirs) == 4 and all(torch.equal(a[2], b[2]) for a, b in zip(ours, theirs))
    assert torch.equal(ours[0][2], epochs[1][32:48])  # the third batch of epoch 1: where it left off


@pytest.mark.integration
def test_pretraining_through_device_batches_trains_exactly_as_through_the_dataloader(cifar_root, monkeypatch,
                                                                                    tmp_path):
    """Lightning drives DeviceBatches as it drives a DataLoader (its epochs, its
    length): the same pretraining, to the last bit of the loss and the kNN."""
    from conftest import compose_config, strict_json

    from ssl_runner.pipeline import run_pipeline

    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    overrides = ["method=simclr", "experiment=smoke", "data.subset=256", "data.test_subset=128", "data.batch_size=64",
                 "trainer.max_epochs=2", "eval.random_baseline=false", "pipeline.stages=[pretrain,knn]",
                 "monitor.knn_every_n_epochs=0", "monitor.label_free=false", "pipeline.plots=false"]
    run_pipeline(compose_config(overrides), tmp_path / "dataloader")
    monkeypatch.setattr("ssl_runner.data.loaders.holds_images_on_device", lambda device, images: True)
    run_pipeline(compose_config(overrides), tmp_path / "device")
    first, second = (strict_json(tmp_path / name / "summary.json")["stages"] for name in ("dataloader", "device"))
    assert first["pretrain"]["loss"] == second["pretrain"]["loss"] and first["knn"]["top1"] == second["knn"]["top1"]
    assert first["pretrain"]["epochs"] == second["pretrain"]["epochs"] == 2
