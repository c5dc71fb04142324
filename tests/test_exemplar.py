"""Exemplar-CNN: seeds chosen by the run's seed alone (every rank, every
restart), surrogate labels = positions among the seeds, fresh random
transformations per showing, an epoch of N x k samples."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose_config, run_method_cli

from ssl_runner.data.datasets import ImageSet
from ssl_runner.data.loaders import pretrain_loader
from ssl_runner.errors import UserError
from ssl_runner.methods import build_method
from ssl_runner.methods.exemplar import Exemplar
from ssl_runner.views.exemplar import HSVPower, PrincipalComponentScaling, RandomRotation


def _cfg(*overrides: str):
    return compose_config(["method=exemplar", "experiment=smoke", "trainer.channels_last=false", *overrides])


def _images(n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    return ImageSet(labels=torch.arange(n) % 10, classes=[str(c) for c in range(10)],
                    images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g))


def test_seeds_are_seeded_sized_distinct_and_independent_of_the_global_rng():
    cfg = _cfg("method.num_exemplars=300")
    torch.manual_seed(1)
    seeds = Exemplar.pretrain_images(cfg, 2000).indices
    torch.manual_seed(2)  # what each rank and each epoch does to the global RNG
    torch.rand(7)
    assert torch.equal(Exemplar.pretrain_images(cfg, 2000).indices, seeds)  # so also after a restart
    assert len(seeds) == 300 and len(seeds.unique()) == 300
    assert torch.equal(seeds, seeds.sort().values) and 0 <= int(seeds.min()) and int(seeds.max()) < 2000
    other = Exemplar.pretrain_images(_cfg("method.num_exemplars=300", "seed=1"), 2000).indices
    assert not torch.equal(other, seeds)
    # All images are seeds when N equals the split.
    every_image = Exemplar.pretrain_images(_cfg("method.num_exemplars=2000"), 2000).indices
    assert torch.equal(every_image, torch.arange(2000))


def _rank_worker(rank: int, tmp: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'store'}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(1000 + rank)  # ranks draw different views: their global RNGs differ
    seeds = Exemplar.pretrain_images(_cfg("method.num_exemplars=300"), 2000).indices
    gathered = [torch.empty_like(seeds) for _ in range(2)]
    dist.all_gather(gathered, seeds)
    torch.save(gathered, tmp / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.distributed
def test_every_rank_picks_the_same_seeds(tmp_path):
    mp.spawn(_rank_worker, args=(tmp_path,), nprocs=2, join=True)
    expected = Exemplar.pretrain_images(_cfg("method.num_exemplars=300"), 2000).indices
    for rank in range(2):
        for seeds in torch.load(tmp_path / f"rank{rank}.pt"):
            assert torch.equal(seeds, expected)


@pytest.mark.parametrize("views_on", ["device", "cpu"])
def test_an_epoch_shows_each_seed_k_times_labelled_by_its_position_among_the_seeds(views_on):
    cfg = _cfg("method.num_exemplars=12", "method.samples_per_exemplar=4", "data.batch_size=8",
               f"data.views_on={views_on}")
    split = _images(40)
    pretrain = Exemplar.pretrain_images(cfg, len(split))
    seeds = pretrain.indices
    method = build_method(cfg, 10, len(seeds))
    assert method.num_samples == 12 and method.classifier.out_features == 12 and pretrain.repeats == 4
    loader = pretrain_loader(cfg.data, split.select(seeds), method.view_maker,
                             batch_size=cfg.data.batch_size, repeats=pretrain.repeats)
    torch.manual_seed(0)
    shown = []
    for images, labels, indices in loader:
        assert int(indices.max()) < 12
        assert torch.equal(labels, split.labels[seeds[indices]])
        if views_on == "device":  # the seeds' own pixels, views made after the transfer
            assert torch.equal(images, split.images[seeds[indices]])
        else:  # one view made in the worker
            assert images[0].shape == (len(indices), 3, 32, 32)
        shown.append(indices)
    assert len(shown) == 12 * 4 // 8
    assert torch.bincount(torch.cat(shown), minlength=12).tolist() == [4] * 12
    # The surrogate label is that position: a classifier that predicts it has a near-zero loss.
    with torch.no_grad():
        method.classifier.weight.zero_()
        method.classifier.bias.copy_(torch.arange(12) == 5).mul_(100)
    out = method.ssl_step([torch.randn(3, 3, 32, 32)], torch.tensor([5, 5, 5]))
    assert float(out.loss.detach()) < 1e-3 and out.logs["surrogate_top1"] == 100
    assert float(method.ssl_step([torch.randn(3, 3, 32, 32)], torch.tensor([4, 5, 6])).loss.detach()) > 10


def test_the_method_refuses_a_pretraining_set_other_than_its_seeds():
    with pytest.raises(ValueError, match="seeds"):
        build_method(_cfg("method.num_exemplars=12"), 10, 2000)


def test_every_showing_of_a_seed_is_a_fresh_transformation():
    cfg = _cfg()
    method = build_method(cfg, 10, 500)
    assert [a.name for a in method.view_maker.augmentations] == ["crop", "flip", "small_rotation", "pca_contrast", "hsv"]
    seed = _images(1).images
    torch.manual_seed(0)
    a, b = method.make_views(seed.expand(2, -1, -1, -1))[0]
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert (a - b).abs().mean() > 0.05
    # Each part is the identity at its neutral parameters, and changes the image otherwise.
    x = torch.rand(4, 3, 32, 32)
    pca = PrincipalComponentScaling(list(cfg.data.mean))
    torch.testing.assert_close(pca.apply(x, {"factors": torch.ones(4, 3)}), x, atol=1e-3, rtol=0)
    assert (pca.apply(x, {"factors": torch.full((4, 3), 2.0)}) - x).abs().mean() > 0.02
    hsv = HSVPower()
    neutral = {k: torch.ones(4) if k.endswith(("power", "factor")) else torch.zeros(4)
               for k in hsv.sample(4, 32, 32)}
    torch.testing.assert_close(hsv.apply(x, neutral), x, atol=1e-5, rtol=0)
    assert (hsv.apply(x, {**neutral, "hue": torch.full((4,), 0.1)}) - x).abs().mean() > 0.02
    rotation = RandomRotation(20.0)
    torch.testing.assert_close(rotation.apply(x, {"angle": torch.zeros(4)}), x, atol=1e-5, rtol=0)
    assert (rotation.apply(x, {"angle": torch.full((4,), 20.0)}) - x).abs().mean() > 0.05
    assert rotation.sample(1000, 32, 32)["angle"].abs().max() <= 20.0


def test_more_exemplars_than_training_images_is_a_user_error():
    with pytest.raises(UserError, match=r"method.num_exemplars=3000 .* \(2000 images.*at most 2000"):
        Exemplar.pretrain_images(_cfg("method.num_exemplars=3000"), 2000)
    # An epoch that holds no whole batch is refused too, naming the keys to change.
    with pytest.raises(UserError, match="method.samples_per_exemplar"):
        Exemplar.pretrain_images(_cfg("method.num_exemplars=10", "method.samples_per_exemplar=2"), 2000)
    # Settings that can never work are refused with the config, before any data are read.
    with pytest.raises(UserError, match="must both be at least 1"):
        _cfg("method.samples_per_exemplar=0")


@pytest.mark.integration
def test_smoke_run_pretrains_on_the_seeds_and_evaluates_on_the_whole_split(cifar_root, tmp_path):
    """The issue's command: exit 0, a complete summary; pretraining iterated
    over 500 seeds x 4 = 2,000 samples an epoch (15 steps of 128), kNN and
    linear over all 2,000 training images."""
    run_dir = tmp_path / "p-exemplar"
    summary, rows = run_method_cli(cifar_root, run_dir, "method=exemplar", "eval.random_baseline=false")
    pretrain = summary["stages"]["pretrain"]
    assert (pretrain["pretrain_images"], pretrain["samples_per_epoch"], pretrain["epochs"]) == (500, 2000, 2)
    assert summary["stages"]["knn"]["train_images"] == 2000
    assert 0.0 <= summary["stages"]["linear"]["top1"] <= 100.0
    epoch_ends = {int(r["epoch"]): int(r["step"]) for r in rows if r["train/loss_epoch"]}
    assert epoch_ends == {0: 14, 1: 29}  # 2,000 // 128 = 15 optimizer steps an epoch
    accuracy = [float(r["train/surrogate_top1"]) for r in rows if r["train/surrogate_top1"]]
    assert len(accuracy) == 2 and all(0.0 <= a <= 100.0 for a in accuracy)
    heads = torch.load(run_dir / "pretrain" / "encoder.pt", weights_only=True)["heads"]
    assert heads["classifier.weight"].shape[0] == 500
