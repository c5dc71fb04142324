"""RotNet: exact rotations, all four copies of every image in a batch, labelled
by their rotation."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, run_method_cli

from ssl_runner.methods.rotnet import four_rotations


def test_rotations_are_exact_and_labelled_by_quarter_turns():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    rotated, labels = four_rotations(images)
    assert rotated.shape == (8, 3, 4, 4) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for image_index, image in enumerate(images):
        channel = image[0]
        by_label = {int(k): rotated[k * 2 + image_index, 0] for k in labels.unique()}
        assert torch.equal(by_label[0], channel)
        # 90 degrees counter-clockwise: the first row becomes the first column, read bottom-up.
        assert torch.equal(by_label[1][:, 0], channel[0].flip(0))
        assert torch.equal(by_label[2], channel.flip(0).flip(1))
        assert torch.equal(by_label[3][:, 0], channel[-1])
        # Exact: the same pixel values, only moved.
        for k in range(4):
            assert torch.equal(by_label[k].flatten().sort().values, channel.flatten().sort().values)


def test_every_image_appears_in_all_four_rotations_of_its_batch(cifar_root):
    from ssl_runner.methods import build_method

    cfg = compose_config(["method=rotnet", "experiment=smoke", f"data.root={cifar_root}",
                          "monitor.knn_every_n_epochs=0", "trainer.channels_last=false"])
    torch.manual_seed(0)
    module = build_method(cfg, 10, 64)
    # No colour augmentation in RotNet's views.
    assert [a.name for a in module.view_maker.augmentations] == ["crop", "flip"]
    images = torch.rand(6, 3, 32, 32)
    seen = []
    module.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    out = module.ssl_step([images], torch.arange(6))
    batch = seen[0]
    assert batch.shape[0] == 24 and out.features.shape[0] == 6
    for i, image in enumerate(images):
        for k in range(4):
            assert torch.equal(batch[k * 6 + i], torch.rot90(image, k, dims=(1, 2)))
    assert 0.0 < float(out.loss) < 3.0 and out.loss.requires_grad


@pytest.mark.integration
def test_smoke_run_completes_and_logs_the_rotation_accuracy(cifar_root, tmp_path):
    """The issue's command: exit 0, a complete summary, the pretext accuracy in
    the metrics (whether RotNet learns is shown by experiment=cifar10_cpu)."""
    _, rows = run_method_cli(cifar_root, tmp_path / "p-rotnet", "method=rotnet", "eval.random_baseline=false")
    accuracy = [float(r["train/rotation_top1"]) for r in rows if r["train/rotation_top1"]]
    assert len(accuracy) == 2 and all(0.0 <= a <= 100.0 for a in accuracy)
