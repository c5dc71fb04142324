"""Context encoder: the three mask kinds, the masked L2 loss, the masked input
the encoder sees, the optional adversarial term's two optimizers, the image
grid, and the smoke run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import compose_config, run_method_cli
from torchvision.io import read_image

from ssl_runner.errors import UserError
from ssl_runner.losses import discriminator_loss, discriminator_top1, generator_adversarial_loss, masked_l2_loss
from ssl_runner.methods import build_method
from ssl_runner.methods.context_encoder import ARTIFACT_MASK_SEED, GRID_FILE
from ssl_runner.views.masks import centre_mask, draw_mask, random_block_mask, random_region_mask


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bounding_box(mask2d: torch.Tensor) -> tuple[int, int, int, int]:
    rows = mask2d.any(1).nonzero().flatten()
    columns = mask2d.any(0).nonzero().flatten()
    return int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1


def _four_connected_pieces(masks: torch.Tensor) -> list[int]:
    """The number of 4-connected pieces of each N x H x W mask: every masked
    pixel takes the largest index among itself and its masked neighbours
    until nothing changes; one index survives per piece."""
    n, h, w = masks.shape
    labels = torch.where(masks, torch.arange(1, h * w + 1).view(1, h, w).expand(n, h, w), 0)
    while True:
        p = torch.nn.functional.pad(labels, (1, 1, 1, 1))
        grown = torch.stack([labels, p[:, 1:-1, :-2], p[:, 1:-1, 2:], p[:, :-2, 1:-1], p[:, 2:, 1:-1]]).amax(0) * masks
        if torch.equal(grown, labels):
            return [len(image.unique()) - 1 for image in labels]
        labels = grown


# ---- masks -------------------------------------------------------------------------------------

def test_centre_mask_is_exactly_the_central_quarter():
    mask = centre_mask(3, 32, 32)
    assert mask.shape == (3, 1, 32, 32) and mask.dtype == torch.bool
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[8:24, 8:24] = True
    assert all(torch.equal(m[0], expected) for m in mask)
    # Odd and unequal sides: half of each (floored), centred (floored).
    odd = centre_mask(1, 7, 10)[0, 0]
    assert _bounding_box(odd) == (2, 5, 2, 7) and int(odd.sum()) == 3 * 5


def test_random_block_masks_are_quarter_squares_inside_the_image_at_varying_positions():
    masks = random_block_mask(300, 32, 32, generator=_seeded(0))[:, 0]
    corners = []
    for mask in masks:
        top, bottom, left, right = _bounding_box(mask)
        # A full 16 x 16 square: its bounding box is 16 x 16 and it holds 256 pixels.
        assert (bottom - top, right - left) == (16, 16) and int(mask.sum()) == 256
        corners.append((top, left))
    tops, lefts = torch.tensor(corners).unbind(1)
    # Every position inside the image occurs, the extremes included (17 per axis).
    assert set(tops.tolist()) == set(range(17)) and set(lefts.tolist()) == set(range(17))


def test_random_region_masks_never_exceed_a_quarter_and_differ_between_images():
    masks = random_region_mask(200, 32, 32, min_fraction=0.1, generator=_seeded(1))
    counts = masks.flatten(1).sum(1)
    assert int(counts.max()) <= 256 and int(counts.min()) >= int(0.1 * 1024)
    assert counts.float().std() > 20  # the covered fraction is drawn per image
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in masks}) == 200
    # One blob each, not speckles: nearly every region is one 4-connected piece.
    pieces = torch.tensor(_four_connected_pieces(masks[:100, 0]))
    assert (pieces == 1).float().mean() > 0.9 and pieces.max() <= 3
    # min_fraction 1/4: exactly a quarter each; beyond a quarter is refused.
    assert (random_region_mask(20, 32, 32, min_fraction=0.25).flatten(1).sum(1) == 256).all()
    with pytest.raises(ValueError, match="min_fraction"):
        random_region_mask(2, 32, 32, min_fraction=0.3)


@pytest.mark.parametrize("kind", ["centre", "random_block", "random_region"])
def test_the_same_generator_seed_gives_the_same_masks(kind):
    first = draw_mask(kind, 16, 32, 32, generator=_seeded(5))
    assert first.shape == (16, 1, 32, 32) and first.dtype == torch.bool
    assert torch.equal(first, draw_mask(kind, 16, 32, 32, generator=_seeded(5)))
    other = draw_mask(kind, 16, 32, 32, generator=_seeded(6))
    assert torch.equal(first, other) == (kind == "centre")


# ---- the loss ----------------------------------------------------------------------------------

def test_masked_l2_loss_against_a_hand_computed_value():
    prediction = torch.tensor([[[[1.0, 5.0], [7.0, 2.0]], [[3.0, 9.0], [9.0, -1.0]]]])  # 1 x 2 x 2 x 2
    target = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]])
    mask = torch.tensor([[[[True, False], [False, True]]]])
    # Masked pixels (0, 0) and (1, 1) in both channels: errors 1, 1, 2, -1 -> (1 + 1 + 4 + 1) / 4.
    assert float(masked_l2_loss(prediction, target, mask)) == pytest.approx(7 / 4)
    assert float(masked_l2_loss(prediction, target, torch.zeros_like(mask))) == 0.0  # nothing masked


def test_unmasked_pixels_change_neither_the_loss_nor_get_gradient():
    torch.manual_seed(0)
    target = torch.randn(3, 3, 8, 8)
    mask = random_region_mask(3, 8, 8, min_fraction=0.2, generator=_seeded(2))
    full = mask.expand_as(target)
    prediction = torch.randn(3, 3, 8, 8, requires_grad=True)
    loss = masked_l2_loss(prediction, target, mask)
    loss.backward()
    # Huge, infinite and NaN predictions wherever nothing is masked.
    edited = prediction.detach().clone()
    outside = int((~full).sum())
    edited[~full] = torch.tensor([1e6, float("inf"), float("nan")]).repeat(outside)[:outside]
    edited.requires_grad_()
    edited_loss = masked_l2_loss(edited, target, mask)
    edited_loss.backward()
    assert edited_loss.item() == loss.item()
    for grad in (prediction.grad, edited.grad):
        assert (grad[~full] == 0).all()
        torch.testing.assert_close(grad[full], 2 * (prediction.detach() - target)[full] / full.sum())


# ---- the method ----------------------------------------------------------------------------------

def _method(cifar_root, *overrides):
    cfg = compose_config(["method=context_encoder", "experiment=smoke", f"data.root={cifar_root}",
                          "monitor.knn_every_n_epochs=0", *overrides])
    torch.manual_seed(0)
    return cfg, build_method(cfg, 10, 64)


def test_the_encoder_sees_the_image_with_the_region_at_the_mean_and_the_loss_is_on_the_region(cifar_root):
    cfg, module = _method(cifar_root)
    assert [a.name for a in module.view_maker.augmentations] == ["crop", "flip"]
    assert module.automatic_optimization and module.discriminator is None
    images = torch.randn(6, 3, 32, 32)
    seen = []
    module.backbone.conv1.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    out = module.ssl_step([images], torch.arange(6))
    context = seen[0]
    dropped = (context == 0).all(1, keepdim=True)  # the region: 0 (the data mean) in every channel
    covered = dropped.flatten(1).sum(1)
    assert (covered >= int(0.1 * 1024)).all() and (covered <= 256).all()
    torch.testing.assert_close(context, images.masked_fill(dropped, 0.0), rtol=0, atol=0)
    # The loss is the squared error of the decoder's image on that region only.
    _, feature_map, reconstruction = module.inpaint(images, dropped)
    assert reconstruction.shape == images.shape and out.features.shape == (6, module.feature_dim)
    torch.testing.assert_close(out.loss, masked_l2_loss(reconstruction, images, dropped))
    torch.testing.assert_close(out.features, feature_map.mean(dim=(-2, -1)))


def test_the_generator_term_trains_no_discriminator_parameter(cifar_root):
    _, module = _method(cifar_root, "method.adversarial_weight=0.001")
    out = module.ssl_step([torch.randn(8, 3, 32, 32)], torch.arange(8))
    assert set(out.logs) == {"reconstruction_loss", "adversarial_loss"}
    out.loss.backward()
    assert all(p.grad is None for p in module.discriminator.parameters())
    assert all(p.grad is not None for p in module.backbone.parameters())


def test_one_adversarial_step_trains_both_players_with_separate_optimizers(cifar_root, tmp_path):
    cfg, module = _method(cifar_root, "method.adversarial_weight=0.001", "data.batch_size=16")
    assert not module.automatic_optimization
    batch = (torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.arange(16) % 10, torch.arange(16))
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, loader)
    changed = {name for name, p in module.named_parameters() if not torch.equal(p, before[name])}
    for prefix in ("discriminator.", "backbone.", "decoder.", "online_probe."):
        group = [name for name in before if name.startswith(prefix)]
        assert group and set(group) <= changed, prefix
    main, adam = trainer.optimizers
    discriminator_ids = {id(p) for p in module.discriminator.parameters()}
    main_ids = {id(p) for group in main.param_groups for p in group["params"]}
    assert not discriminator_ids & main_ids
    assert {id(p) for group in adam.param_groups for p in group["params"]} == discriminator_ids
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.5, 0.999)
    assert adam.param_groups[0]["lr"] == cfg.method.discriminator_lr == 2e-4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 1  # the main schedule stepped once
    module.export_encoder(tmp_path / "encoder.pt")
    heads = torch.load(tmp_path / "encoder.pt", weights_only=True)["heads"]
    assert any(k.startswith("decoder.") for k in heads) and not any(k.startswith("discriminator.") for k in heads)
    # Resuming restores both optimizers and the schedule, then takes one more step of each.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    _, fresh = _method(cifar_root, "method.adversarial_weight=0.001", "data.batch_size=16")
    resumed = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    resumed.fit(fresh, loader, ckpt_path=str(tmp_path / "last.ckpt"))
    adam_state = resumed.optimizers[1].state[next(fresh.discriminator.parameters())]
    assert int(adam_state["step"]) == 2 and resumed.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_the_adversarial_term_refuses_gradient_accumulation(cifar_root):
    with pytest.raises(UserError, match="accumulate_grad_batches"):
        _method(cifar_root, "method.adversarial_weight=0.001", "trainer.accumulate_grad_batches=2")
    _, module = _method(cifar_root, "trainer.accumulate_grad_batches=2")  # L2 alone: automatic, accumulates
    assert module.automatic_optimization


def test_the_grid_shows_masked_inputs_completions_and_originals_deterministically(cifar_root, tmp_path):
    cfg, module = _method(cifar_root, "method.mask=random_block")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    module.train()
    assert module.save_artifacts(tmp_path / "a", images) == [GRID_FILE]
    assert module.training  # restored
    module.save_artifacts(tmp_path / "b", images)
    grid = read_image(str(tmp_path / "a" / GRID_FILE))
    assert torch.equal(grid, read_image(str(tmp_path / "b" / GRID_FILE)))
    assert grid.shape == (3, 3 * 34 + 2, 8 * 34 + 2)  # 3 rows of 8 32-px images, 2-px borders

    def cell(row, column):
        return grid[:, 2 + 34 * row: 34 + 34 * row, 2 + 34 * column: 34 + 34 * column].int()

    mask = draw_mask("random_block", 8, 32, 32, generator=_seeded(ARTIFACT_MASK_SEED))[:, 0]
    mean = (torch.tensor(list(cfg.data.mean)) * 255).round().int().view(3, 1)
    for i in range(8):
        assert (cell(2, i) - images[i].int()).abs().max() <= 1  # the original
        assert (cell(0, i)[:, mask[i]] - mean).abs().max() <= 1  # the region at the data mean
        assert (cell(0, i)[:, ~mask[i]] - images[i].int()[:, ~mask[i]]).abs().max() <= 1
        assert (cell(1, i)[:, ~mask[i]] - images[i].int()[:, ~mask[i]]).abs().max() <= 1  # context kept
    # Images at another load size are resized to data.image_size first.
    module.save_artifacts(tmp_path / "c", torch.randint(0, 256, (8, 3, 40, 40), dtype=torch.uint8))
    assert read_image(str(tmp_path / "c" / GRID_FILE)).shape == grid.shape


@pytest.mark.integration
def test_smoke_run_writes_the_grid_and_the_reconstruction_loss_falls(cifar_root, tmp_path):
    """The issue's command: exit 0, kNN and linear above chance (run_method_cli), the grid listed as an
    artifact, the training loss lower in the second epoch than in the first."""
    run_dir = tmp_path / "run"
    summary, rows = run_method_cli(cifar_root, run_dir, "method=context_encoder", "eval.random_baseline=false")
    assert summary["stages"]["pretrain"]["artifacts"] == [f"pretrain/{GRID_FILE}"]
    assert read_image(str(run_dir / "pretrain" / GRID_FILE)).shape == (3, 3 * 34 + 2, 8 * 34 + 2)
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert len([r for r in rows if r.get("train/reconstruction_loss")]) == 2


def test_the_gan_losses_against_hand_computed_values():
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-3.0]])
    softplus = torch.nn.functional.softplus  # -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x)
    torch.testing.assert_close(generator_adversarial_loss(fake), softplus(-fake).mean())
    torch.testing.assert_close(discriminator_loss(real, fake), softplus(-real).mean() + softplus(fake).mean())
    # Right: real 2.0 and fake -3.0; wrong: real -1.0 and fake 0.5.
    assert float(discriminator_top1(real, fake)) == 50.0
