"""The semi-supervised stages (SimCLR's protocol): the nested, class-balanced
label subsets, the settings each stage reads, the refusal of an unlabelled
train split, and a run that fine-tunes the whole network on 10 % of the labels."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, compose_config

from ssl_runner.data.label_subsets import label_fraction_subset
from ssl_runner.errors import UserError
from ssl_runner.pipeline import planned_stages
from ssl_runner.stages import STAGES
from ssl_runner.stages.semi import semi_settings

# Four classes of unequal size, interleaved in a fixed shuffled order.
COUNTS = {0: 1000, 1: 250, 2: 40, 3: 7}
_SORTED = torch.cat([torch.full((n,), c) for c, n in COUNTS.items()])
LABELS = _SORTED[torch.randperm(len(_SORTED), generator=torch.Generator().manual_seed(5))]


def _per_class(indices: torch.Tensor) -> dict:
    return {c: int((LABELS[indices] == c).sum()) for c in COUNTS}


def test_a_label_subset_keeps_the_rounded_fraction_of_each_class_and_at_least_one():
    # 10 %: 100, 25, 4 (of 40), 0.7 -> 1; 1 %: 10, 2.5 -> 3 (halves up), 0.4 -> 1, 0.07 -> 1.
    assert _per_class(label_fraction_subset(LABELS, 0.1, seed=0)) == {0: 100, 1: 25, 2: 4, 3: 1}
    assert _per_class(label_fraction_subset(LABELS, 0.01, seed=0)) == {0: 10, 1: 3, 2: 1, 3: 1}
    assert len(label_fraction_subset(LABELS, 1.0, seed=0)) == len(LABELS)


def test_a_label_subset_is_sorted_seeded_and_the_smaller_lies_inside_the_larger():
    for seed in range(4):
        small, large = label_fraction_subset(LABELS, 0.01, seed), label_fraction_subset(LABELS, 0.1, seed)
        for subset in (small, large):
            assert torch.equal(subset, subset.unique())  # sorted, no index twice
        assert set(small.tolist()) < set(large.tolist())
        assert torch.equal(small, label_fraction_subset(LABELS, 0.01, seed))
    assert not torch.equal(label_fraction_subset(LABELS, 0.1, 0), label_fraction_subset(LABELS, 0.1, 1))
    # Seeded by its own generator: the global one is left alone.
    state = torch.get_rng_state()
    label_fraction_subset(LABELS, 0.1, 0)
    assert torch.equal(state, torch.get_rng_state())


def test_a_label_subset_refuses_unlabelled_items_and_a_fraction_outside_zero_to_one():
    with pytest.raises(ValueError, match="every item labelled"):
        label_fraction_subset(torch.tensor([0, 1, -1]), 0.1, 0)
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="in \\(0, 1\\]"):
            label_fraction_subset(LABELS, fraction, 0)


def test_each_semi_stage_reads_the_shared_settings_with_its_own_epochs_and_has_a_twin():
    cfg = compose_config(["eval.semi.epochs_1pct=7", "eval.semi.epochs_10pct=3", "eval.random_baseline=true",
                          "pipeline.stages=[pretrain,semi_1pct,semi_10pct]"])
    one, ten = semi_settings(cfg, "1pct"), semi_settings(cfg, "10pct")
    assert (one.epochs, ten.epochs) == (7, 3)
    # SimCLR's protocol: Nesterov, no weight decay, crop + flip, lr 0.05 x batch / 256.
    for settings in (one, ten):
        assert (settings.lr, settings.batch_size, settings.weight_decay) == (0.05, 256, 0.0)
        assert settings.nesterov and settings.augment
    assert planned_stages(cfg)[-2:] == ["semi_1pct_random_init", "semi_10pct_random_init"]
    assert STAGES["semi_10pct"].random_init.name == "semi_10pct_random_init"


def test_a_semi_stage_on_an_unlabelled_train_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(3):
        (tmp_path / "train" / f"{i}.png").write_bytes(b"")  # listed, never decoded
    with pytest.raises(UserError, match="semi_1pct, which fine-tune.*no class folders"):
        compose_config([f"data.root={tmp_path}", "pipeline.stages=[pretrain,semi_1pct]"])
    compose_config([f"data.root={tmp_path}", "pipeline.stages=[pretrain]"])  # pretraining needs no labels
    with pytest.raises(UserError, match="eval.semi.nesterov' is true with eval.semi.momentum=0.0"):
        compose_config(["eval.semi.momentum=0"])


@pytest.mark.integration
def test_semi_fine_tunes_the_whole_network_on_ten_percent_of_the_labels(cifar_root, tmp_path):
    run_dir = tmp_path / "semi"
    proc = cli(cifar_root, "method=simclr", "data=cifar10", "experiment=smoke", "pipeline.stages=[pretrain,semi_10pct]",
               "eval.random_baseline=true", "data.subset=500", "data.test_subset=200", "trainer.max_epochs=1",
               "monitor.knn_every_n_epochs=0", "eval.semi.epochs_10pct=2", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    semi = summary["stages"]["semi_10pct"]
    # 500 class-balanced training images: 50 a class, 5 of each labelled.
    assert semi["status"] == "done" and semi["labelled_images"] == 50 and semi["label_fraction"] == 0.1
    assert 0.0 <= semi["top1"] <= semi["top5"] <= 100.0
    assert semi["protocol"]["name"] == "semi" and semi["protocol"]["labelled_images"] == 50
    assert (semi["protocol"]["epochs"], semi["protocol"]["weight_decay"], semi["protocol"]["seed"]) == (2, 0.0, 0)
    twin = summary["baseline"]["semi_10pct_random_init"]
    assert twin["status"] == "done" and twin["labelled_images"] == 50 and 0.0 <= twin["top1"] <= 100.0
    # Fewer labelled images (50) than one batch (256) still train: one step an epoch.
    ckpt = torch.load(run_dir / "semi_10pct" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    # The backbone itself was fine-tuned (a linear probe would leave it as pretrained).
    pretrained = torch.load(run_dir / "pretrain" / "encoder.pt", weights_only=True)["backbone"]
    tuned = ckpt["state_dict"]
    assert tuned["encoder.conv1.weight"].shape == pretrained["conv1.weight"].shape
    assert (tuned["encoder.conv1.weight"] - pretrained["conv1.weight"]).abs().max() > 1e-4
