"""The supervised stages' module: a linear probe leaves the encoder (weights
and BatchNorm statistics) untouched; fine-tuning trains it."""

import copy

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from ssl_runner.config import BackboneConfig, ClassifierStageConfig
from ssl_runner.eval.classifier import Classifier
from ssl_runner.models.backbones import build_backbone


def fit_one_epoch(train_encoder: bool):
    torch.manual_seed(0)
    encoder = build_backbone(OmegaConf.structured(BackboneConfig(depth=10, width=0.25)), image_size=32)
    before = copy.deepcopy(encoder.state_dict())
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 10, (32,)), torch.arange(32)), batch_size=16)
    stage = OmegaConf.structured(ClassifierStageConfig(epochs=1, lr=0.1))
    module = Classifier(encoder.feature_dim, 10, stage, encoder=encoder, train_encoder=train_encoder,
                        mean=[0.5] * 3, std=[0.25] * 3)
    head_before = module.head.weight.detach().clone()
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, loader)
    after = encoder.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    return changed, not torch.equal(head_before, module.head.weight)


def test_linear_probe_freezes_encoder_weights_and_batchnorm_statistics():
    changed, head_moved = fit_one_epoch(train_encoder=False)
    assert changed == set() and head_moved


def test_finetuning_trains_the_encoder():
    changed, head_moved = fit_one_epoch(train_encoder=True)
    assert "conv1.weight" in changed and "bn1.running_mean" in changed and head_moved


def test_cached_features_are_standardised_by_the_train_splits_statistics():
    from ssl_runner.eval.features import standardise

    gen = torch.Generator().manual_seed(0)
    train = torch.randn(500, 3, generator=gen) * torch.tensor([0.1, 4.0, 0.0]) + torch.tensor([2.0, -1.0, 5.0])
    test = torch.tensor([[2.1, 3.0, 5.0]])
    s_train, s_test = standardise(train, test)
    assert torch.allclose(s_train[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(s_train[:, :2].std(0, unbiased=False), torch.ones(2), atol=1e-3)
    assert torch.equal(s_train[:, 2], torch.zeros(500))  # a constant dimension stays finite: zero
    mean, std = train.mean(0), train.std(0, unbiased=False)
    assert torch.allclose(s_test[0, :2], (test[0, :2] - mean[:2]) / std[:2], rtol=1e-3)  # train's statistics, not test's
