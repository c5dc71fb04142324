"""The schema of the evaluation stages' settings (`eval.*`): part of the
config schema in `ssl_runner/config.py`, which re-exports these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class KnnConfig:
    k: int = 200
    temperature: float = 0.1


@dataclass
class SupervisedTraining:
    """How a supervised stage trains (batch, optimiser, augmentation): shared
    by the classifier stages and by the semi-supervised block, whose epochs
    differ by label fraction."""

    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    # false: train on features of unaugmented images, computed once (fast);
    # true: random crop + flip each epoch, the encoder run every step.
    augment: bool = False


@dataclass
class ClassifierStageConfig(SupervisedTraining):
    """A supervised stage on top of the pretrained encoder (linear or fine-tune)."""

    epochs: int = 100


@dataclass
class ProbeConfig(ClassifierStageConfig):
    """The property probes (probe_rotation, probe_color): a linear classifier
    on cached frozen features of every image under each transform."""

    epochs: int = 30
    lr: float = 0.5
    # Class-balanced subsets (each image is encoded once per transform); null: all.
    train_images: Optional[int] = 10000
    test_images: Optional[int] = None


@dataclass
class NonLinearStageConfig(ClassifierStageConfig):
    """The `nonlinear` stage: RotNet's non-linear classifier (Sec. 3.1; the
    official code's MultLayer classifier) on the frozen encoder's feature map
    at eval.feature_layer: pool 3/2/1, flatten, two hidden layers of
    `hidden_dim` (Linear + BatchNorm + ReLU), a linear output layer."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    nesterov: bool = True
    weight_decay: float = 5e-4
    # true: random crop + flip each epoch; false: the unaugmented images.
    augment: bool = True
    # The official code's width: min(20 x classes, 2048) = 200 for CIFAR-10.
    hidden_dim: int = 200
    # The 3x3, stride-2 pool before flattening: "max" or "avg" (the official
    # NIN's block 2 ends in an average pool; see conf/experiment/rotnet_cifar10.yaml).
    pool: str = "max"


@dataclass
class SemiConfig(SupervisedTraining):
    """The semi-supervised stages (semi_1pct, semi_10pct, their random-init
    twins): the whole network, backbone and a new linear head, fine-tuned on
    a class-balanced, seeded 1 % or 10 % of the training labels (SimCLR,
    Chen et al. 2020, Appendix B.5: Nesterov momentum, no weight decay, "no
    regularization", no warm-up, crop + flip only). One block for both
    fractions; only the epochs differ, hence no single `epochs` key."""

    # The paper's, on ImageNet: 60 epochs on 1 % of the labels, 30 on 10 %.
    epochs_1pct: int = 60
    epochs_10pct: int = 30
    # The paper's rule, lr = 0.05 x batch / 256 (0.8 at its batch 4096), at
    # batch 256; not rescaled here: change it with batch_size.
    lr: float = 0.05
    nesterov: bool = True
    # Random crop + flip each epoch: the protocol.
    augment: bool = True


@dataclass
class EvalConfig:
    random_baseline: bool = False
    # The backbone stage whose pooled output every evaluation stage uses
    # (layer1..layer4 of a ResNet, block1..blockN of a NIN; the nonlinear
    # stage reads its unpooled map); null: the last stage (the representation h).
    feature_layer: Optional[str] = None
    knn: KnnConfig = field(default_factory=KnnConfig)
    # Also the settings of linear_concat (LooC++), so the two are comparable.
    linear: ClassifierStageConfig = field(default_factory=ClassifierStageConfig)
    # The transfer stage (add it to pipeline.stages): kNN (knn's k and
    # temperature) and the linear probe (linear's settings, cached features)
    # on other data sets, each `cifar10`, `cifar100`, `stl10` (root from
    # conf/data/<name>.yaml) or `<name>:PATH` (imagefolder:PATH).
    transfer: List[str] = field(default_factory=list)
    # Class-balanced, seeded subsets of each target's train / test split (null: all).
    transfer_subset: Optional[int] = None
    transfer_test_subset: Optional[int] = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    nonlinear: NonLinearStageConfig = field(default_factory=NonLinearStageConfig)
    finetune: ClassifierStageConfig = field(
        default_factory=lambda: ClassifierStageConfig(
            epochs=30, lr=0.01, weight_decay=5e-4, nesterov=True, augment=True
        )
    )
    semi: SemiConfig = field(default_factory=SemiConfig)
