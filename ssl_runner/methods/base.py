"""`BaseMethod`: the contract between a method and the runner.

A method subclass says only what is its own: its config schema and its
checks (`check_config`), its heads, its view maker (`views/`), its loss
(`ssl_step`) and, if it has any, its momentum copies (`momentum_pairs`). The
base class owns the backbone, the online linear probe and the encoder export
that later stages load; the Lightning steps that call these hooks (views,
logging, monitors, optimizer, EMA) are in `ssl_runner/pretraining.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig
from torch import Tensor, nn

from ssl_runner.config import to_plain
from ssl_runner.data.datasets import ImageSet
from ssl_runner.encoder import save_encoder
from ssl_runner.models.backbones import build_backbone
from ssl_runner.models.momentum import MOMENTUM_SCHEDULES, MomentumEncoder
from ssl_runner.optim import split_decay_groups
from ssl_runner.pretraining import PretrainingSteps
from ssl_runner.validation import check_choice
from ssl_runner.views.protocol import ViewMaker
from ssl_runner.views.recipe import view_recipe_from_config


@dataclass
class SSLStepOutput:
    """What a method's `ssl_step` hands back to the shared training step."""

    loss: Tensor
    # Representations h of the views; the online probe trains on them detached.
    features: Tensor
    # Embeddings whose normalised std is the collapse monitor (z for SimCLR).
    embeddings: Optional[Tensor] = None
    logs: Dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainImages:
    """What pretraining iterates over: the sorted indices of the training
    images (None: all of them) and how many times an epoch shows each one,
    with fresh views each time."""

    indices: Optional[Tensor] = None
    repeats: int = 1


class BaseMethod(PretrainingSteps):
    """A self-supervised method over a backbone; subclasses add heads and a loss."""
    # Submodules left out of the exported encoder (momentum copies, queues, banks).
    not_exported: tuple = ()
    # Evaluation stages this method adds after `linear` when the pipeline has
    # one and does not list them (LooC: its LooC++ probe and the rotation probe).
    extra_eval_stages: tuple = ()

    def __init__(self, cfg: DictConfig, num_classes: int, num_samples: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters({"config": to_plain(cfg), "num_classes": num_classes, "num_samples": num_samples})
        self.cfg = cfg
        self.num_classes = num_classes
        # Training images (NPID's memory bank has one row each).
        self.num_samples = num_samples
        self.backbone = build_backbone(cfg.backbone, cfg.data.image_size).use_channels_last(
            cfg.trainer.channels_last)
        self.feature_dim = self.backbone.feature_dim
        self.online_probe: Optional[nn.Linear] = None
        if cfg.monitor.online_probe and num_classes > 0:
            self.online_probe = nn.Linear(self.feature_dim, num_classes)
        # Two views per image from `cfg.views` (SimCLR's pairs); a method with
        # other inputs replaces it. The maker says how many views a batch becomes.
        self.view_maker: ViewMaker = view_recipe_from_config(cfg, num_views=2)

    # ---- what a method implements -------------------------------------------------
    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        raise NotImplementedError

    def fit_statistics(self, images: "ImageSet") -> None:
        """Before pretraining, what a method estimates from its images (colorization's
        rebalancing weights), kept in buffers so that a resumed run has them."""

    def save_artifacts(self, out_dir: Path, images: Tensor) -> List[str]:
        """After pretraining, on the main process: draw the pretext task's output for
        `images` (uint8 test images) into `out_dir`; returns the files' names."""
        return []

    def make_views(self, images: Tensor) -> List[Tensor]:
        """The training views of a uint8 batch, made on the model's device."""
        return self.view_maker.views(images)

    def ssl_modules(self) -> Dict[str, nn.Module]:
        """Modules trained by the SSL loss (all but the online probe)."""
        return {name: m for name, m in self.named_children() if name != "online_probe"}

    # ---- before the method is built ------------------------------------------------
    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Refuse, with a `UserError`, settings of the method's own that cannot work;
        `validation.validate` calls it after typing, before any work. An override
        calls this one too: it checks the keys of momentum copies (MoCo, BYOL, LooC)."""
        if "momentum_schedule" in cfg.method:
            check_choice("method.momentum_schedule", cfg.method.momentum_schedule, MOMENTUM_SCHEDULES)

    @classmethod
    def pretrain_images(cls, cfg: DictConfig, num_images: int) -> PretrainImages:
        """The training images pretraining iterates over (default: all, once an epoch;
        evaluation always uses the whole split). `num_samples` is then the subset's
        size and batch `indices` are positions in it (Exemplar-CNN's surrogate
        classes). A function of its arguments only: every rank and a resumed run
        get the same subset."""
        return PretrainImages()

    @classmethod
    def concat_features(cls, backbone: nn.Module, heads: Dict[str, Tensor], method_cfg: Any) -> Optional[nn.Module]:
        """Images -> the concatenated representations of a method with several
        (LooC++), built from an exported encoder's backbone and heads (the
        linear_concat stage); None for a method with one representation."""
        return None

    def momentum_pairs(self) -> List[Tuple[nn.Module, MomentumEncoder]]:
        """(online network, its EMA copy) pairs, updated in this order after
        each real optimizer step with `ema_momentum()` (MoCo's key encoder,
        BYOL's target; after solo-learn's `momentum_pairs`). A method that
        declares any has `momentum` and `momentum_schedule` in its config."""
        return []

    def encoder_with(self, head: nn.Module) -> nn.Module:
        """Backbone then `head`, as one module for an EMA copy and its updates.
        Built on demand, never assigned: the backbone stays registered once."""
        return nn.Sequential(self.backbone, head)

    def param_groups(self, weight_decay: float) -> List[Dict[str, Any]]:
        """Parameter groups for the SSL modules; override to give a head its own lr."""
        groups: List[Dict[str, Any]] = []
        for name, module in self.ssl_modules().items():
            groups += split_decay_groups(module, weight_decay, self.cfg.optimizer.exclude_bias_and_norm, name=name)
        return groups

    # ---- hand-over to the evaluation stages ---------------------------------------
    def export_encoder(self, path: Path) -> None:
        """Write the backbone (and the method's heads) as plain tensors, loadable
        with `torch.load(weights_only=True)` and strictly by `load_encoder`."""
        skipped = ("backbone.", "online_probe.") + tuple(f"{name}." for name in self.not_exported)
        heads = {k: v for k, v in self.state_dict().items() if not k.startswith(skipped)}
        save_encoder(path, self.cfg, self.backbone, heads)
