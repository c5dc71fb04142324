"""DataLoaders over real CIFAR-10: whole-batch fetching returns the right
images, labels and indices, in every loader kind."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import load_split
from ssl_runner.data.loaders import InMemoryBatches, eval_loader, labelled_train_loader, pretrain_loader
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
