"""Counting and PIRL: their losses against hand-computed values, counting's
five inputs, PIRL's memory bank and views, and each method's smoke run on
real CIFAR-10."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import compose_config, run_method_cli

from ssl_runner.data.datasets import load_split
from ssl_runner.data.loaders import pretrain_loader
from ssl_runner.losses import counting_loss, memory_bank_nce, pirl_loss
from ssl_runner.methods import build_method
from ssl_runner.methods.counting import counting_inputs


# ---- counting -----------------------------------------------------------------------------------

def test_counting_loss_against_a_hand_computed_value():
    whole = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    tiles_sum = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    other = whole.roll(1, dims=0)  # [[0, 1], [1, 2]]
    # own: |(0, 1)|^2 = 1 and |(-2, 0)|^2 = 4; other: |(-1, 0)|^2 = 1 -> 10 - 1 = 9,
    # |(-1, 1)|^2 = 2 -> 10 - 2 = 8; mean of 1 + 9 and 4 + 8.
    assert counting_loss(whole, other, tiles_sum, margin=10.0).item() == pytest.approx(11.0)
    # The contrastive term is a hinge: far enough from the other image, only the own term is left.
    assert counting_loss(whole, other * 10, tiles_sum, margin=10.0).item() == pytest.approx((1 + 4) / 2)


def test_counting_loss_is_at_least_the_margin_for_constant_counts():
    """The trivial solution the contrastive term rules out: the same counts c
    for every input give max(M, 9|c|^2), never less than M."""
    for scale in (0.0, 0.5, 2.0):
        c = torch.full((4, 3), scale)
        loss = counting_loss(c, c, 4 * c, margin=10.0).item()
        assert loss == pytest.approx(max(10.0, 9 * 3 * scale ** 2))


def test_counting_inputs_are_the_halved_image_and_its_quarters_resampled_alike():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    inputs = counting_inputs(images, down_mode="area", up_mode="nearest")
    assert inputs.shape == (10, 3, 8, 8)

    def up(x):  # nearest 2x: each pixel a 2 x 2 block
        return x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)

    halved = images.unflatten(-1, (4, 2)).unflatten(-3, (4, 2)).mean(dim=(-1, -3))  # 2 x 2 block means
    assert torch.allclose(inputs[:2], up(halved), atol=1e-6)
    quarters = [images[..., :4, :4], images[..., :4, 4:], images[..., 4:, :4], images[..., 4:, 4:]]
    for j, quarter in enumerate(quarters):
        assert torch.equal(inputs[2 * (j + 1):2 * (j + 2)], up(quarter))


# ---- PIRL ---------------------------------------------------------------------------------------

BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_memory_bank_nce_against_hand_computed_softmaxes():
    f, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    index = torch.tensor([0])
    # f . bank = (1, 0, -1): -log e / (e + 1 + 1/e)
    assert memory_bank_nce(f, BANK, index, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-2)))
    # g . bank = (0, 1, 0): -log 1 / (2 + e); at tau 0.5 the logits double
    assert memory_bank_nce(g, BANK, index, 1.0).item() == pytest.approx(math.log(2 + math.e))
    assert memory_bank_nce(g, BANK, index, 0.5).item() == pytest.approx(math.log(2 + math.exp(2)))
    # Sampled negatives: only row 2 competes with the positive.
    negatives = torch.tensor([[2]])
    assert memory_bank_nce(f, BANK, index, 1.0, negatives).item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert memory_bank_nce(g, BANK, index, 1.0, negatives).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("weight", [0.5, 0.25, 1.0])
def test_pirl_loss_mixes_the_jigsaw_and_image_terms_with_lambda(weight):
    f, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    image_term = math.log(1 + math.exp(-1) + math.exp(-2))
    jigsaw_term = math.log(2 + math.e)
    total, jigsaw, image = pirl_loss(f, g, BANK, torch.tensor([0]), 1.0, jigsaw_weight=weight)
    assert (jigsaw.item(), image.item()) == (pytest.approx(jigsaw_term), pytest.approx(image_term))
    assert total.item() == pytest.approx(weight * jigsaw_term + (1 - weight) * image_term)


def test_pirl_bank_gets_no_gradient_and_the_embeddings_do():
    f = torch.nn.functional.normalize(torch.randn(4, 2), dim=1).requires_grad_()
    bank = BANK.clone().requires_grad_()
    total, _, _ = pirl_loss(f, f, bank, torch.tensor([0, 1, 2, 0]), 0.1)
    total.backward()
    assert bank.grad is None and f.grad is not None and f.grad.abs().sum() > 0


@pytest.mark.integration
def test_pirl_step_on_real_images_mixes_its_logged_terms_and_updates_the_batch_rows(cifar_root, tmp_path):
    cfg = compose_config(["method=pirl", "experiment=smoke", f"data.root={cifar_root}", "data.subset=128",
                          "data.batch_size=32", "monitor.knn_every_n_epochs=0", "method.jigsaw_weight=0.3"])
    images = load_split(cfg.data, "train", cfg.seed)
    torch.manual_seed(0)
    module = build_method(cfg, len(images.classes), len(images))
    loader = pretrain_loader(cfg.data, images, module.view_maker, batch_size=cfg.data.batch_size)
    batch = next(iter(loader))[0]
    image, tiles = batch if isinstance(batch, (list, tuple)) else module.make_views(batch)
    assert image.shape == (32, 3, 32, 32) and tiles.shape == (32, 9, 3, 18, 18)

    bank = module.memory.bank.clone()
    indices = torch.arange(32) * 4
    out = module.ssl_step([image, tiles], indices)
    expected = 0.3 * out.logs["jigsaw_nce"] + 0.7 * out.logs["image_nce"]
    assert torch.allclose(out.loss, expected)
    changed = (module.memory.bank != bank).any(dim=1)
    assert changed.nonzero().flatten().tolist() == indices.tolist()
    # m <- normalise(0.5 m + 0.5 f): the new rows lie between the old ones and f.
    f = torch.nn.functional.normalize(module.image_head(module.backbone(image)), dim=1)
    mixed = torch.nn.functional.normalize(0.5 * bank[indices] + 0.5 * f, dim=1)
    assert torch.allclose(module.memory.bank[indices], mixed, atol=1e-4)  # BN in train mode: the same batch

    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                        enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(module, loader)
    ckpt = tmp_path / "pirl.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(state["memory.bank"], module.memory.bank)  # the bank comes back on resume


# ---- the smoke commands -----------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("method", ["counting", "pirl"])
def test_smoke_run_completes_and_learns(cifar_root, tmp_path, method):
    summary, rows = run_method_cli(cifar_root, tmp_path / method, f"method={method}")
    assert summary["method"] == method
    assert summary["baseline"]["knn_random_init"]["status"] == "done"
    if method == "counting":
        # Epoch means: single steps swing between the margin term's M and several times it.
        losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
        assert len(losses) == 2 and losses[1] < losses[0]
    else:
        # PIRL's bank-wide NCE stays near its starting value for these 30 steps (as the bank fills,
        # single steps go either way); its features already beat the random-init encoder's.
        assert summary["stages"]["knn"]["top1"] > summary["baseline"]["knn_random_init"]["top1"]
    encoder = torch.load(tmp_path / method / "pretrain" / "encoder.pt", weights_only=True)
    assert not any(k.startswith("memory.") for k in encoder["heads"])
