"""`BaseMethod`: what every self-supervised method shares.

A method subclass says only what is its own: its config schema, its heads, how
many views it needs and its loss (`ssl_step`). The base class owns the
backbone, the view pipeline, the online linear probe, the kNN and collapse
monitors, the optimizer and schedule built from the config, and the encoder
export that later stages load.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.io import write_png
from torchvision.utils import make_grid

from ssl_runner import distributed
from ssl_runner.config import to_plain
from ssl_runner.data.datasets import ImageSet
from ssl_runner.data.views import ViewRecipe, eval_view
from ssl_runner.eval.knn import knn_top1
from ssl_runner.models.backbones import build_backbone
from ssl_runner.models.momentum import momentum_at
from ssl_runner.runtime import process_age
from ssl_runner.safe_io import atomic_torch_save
from ssl_runner.optim import build_optimizer, build_scheduler, scale_lr, split_decay_groups

ENCODER_FORMAT = "ssl_runner.encoder/1"


@dataclass
class SSLStepOutput:
    """What a method's `ssl_step` hands back to the shared training step."""

    loss: Tensor
    # Representations h of the views (not detached); the online probe trains on
    # them detached, so it can never change the encoder.
    features: Tensor
    # Embeddings whose normalised std is the collapse monitor (z for SimCLR).
    embeddings: Optional[Tensor] = None
    logs: Dict[str, Tensor] = field(default_factory=dict)


def view_recipe_from_config(cfg: DictConfig, **overrides: Any) -> ViewRecipe:
    """The training views that `cfg.views` describes, at `cfg.data.image_size`
    (`overrides`: keyword arguments of `ViewRecipe.simclr` to replace)."""
    v = cfg.views
    return ViewRecipe.simclr(**{**dict(
        size=cfg.data.image_size,
        mean=list(cfg.data.mean),
        std=list(cfg.data.std),
        crop_scale=tuple(v.crop_scale),
        crop_ratio=tuple(v.crop_ratio),
        hflip_p=v.hflip_p,
        jitter_p=v.jitter_p,
        jitter_strength=v.jitter_strength,
        grayscale_p=v.grayscale_p,
        blur_p=v.blur_p,
        blur_sigma=tuple(v.blur_sigma),
        blur_kernel_fraction=v.blur_kernel_fraction,
        solarize_p=v.solarize_p,
        rotation_p=v.rotation_p,
    ), **overrides})


def save_image_grid(rows: Tensor, columns: int, path: Path) -> None:
    """Images in [0, 1] (N x 3 x H x W, row after row of `columns`) as one
    PNG with 2 px of white between them (a pretext method's artifact)."""
    grid = make_grid(rows.detach().float().clamp(0.0, 1.0).cpu(), nrow=columns, padding=2, pad_value=1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_png(grid.mul(255).round().to(torch.uint8), str(path))


def collapse_std(embeddings: Tensor) -> Tensor:
    """Mean per-dimension std of L2-normalised embeddings: about 1/sqrt(d)
    when healthy, 0 when every input maps to one point (SimSiam, Sec. 4.1)."""
    return F.normalize(embeddings.detach().float(), dim=1).std(dim=0).mean()


class BaseMethod(L.LightningModule):
    """A self-supervised method over a backbone; subclasses add heads and a loss."""

    num_views: int = 2
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
        self.recipe = view_recipe_from_config(cfg)
        self._reset_validation()
        self.seconds_to_first_step: Optional[float] = None

    # ---- what a method implements -------------------------------------------------
    def ssl_step(self, views: List[Tensor], indices: Tensor) -> SSLStepOutput:
        raise NotImplementedError

    def fit_statistics(self, images: "ImageSet") -> None:
        """Called once before pretraining with the images it iterates over, for
        what a method estimates from the training set (colorization's
        class-rebalancing weights). Keep results in buffers: a resumed run
        gets them back from the checkpoint."""

    def save_artifacts(self, out_dir: Path, images: Tensor) -> List[str]:
        """After pretraining, on the main process: write what shows the
        pretext task's output for `images` (8 evenly spaced test images, uint8
        N x 3 x H x W) into `out_dir` (the pretrain stage's folder) and return
        the files' names (colorization and context encoder: image grids)."""
        return []

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (BatchNorm on its running statistics) without gradients,
        the previous mode restored after (for `save_artifacts`)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def make_views(self, images: Tensor) -> List[Tensor]:
        """The training views of a uint8 batch, made on the model's device."""
        return self.recipe.views(images, self.num_views)

    def ssl_modules(self) -> Dict[str, nn.Module]:
        """Modules trained by the SSL loss (all but the online probe)."""
        return {name: m for name, m in self.named_children() if name != "online_probe"}

    # ---- data ---------------------------------------------------------------------
    @classmethod
    def pretrain_subset(cls, cfg: DictConfig, num_images: int) -> Optional[Tensor]:
        """The sorted indices of the training images that pretraining iterates
        over, or None for all of them; the evaluation stages and the kNN
        monitor always use the whole split. The method is built with
        `num_samples` = the subset's size, and the `indices` of its batches
        are positions in the subset (Exemplar-CNN: its surrogate classes).
        A function of `cfg` and `num_images` only, so that every rank, and a
        resumed run, gets the same subset."""
        return None

    @classmethod
    def pretrain_repeats(cls, cfg: DictConfig) -> int:
        """How many times a pretraining epoch shows each image (with fresh views each time)."""
        return 1

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, indices = batch
        if self.trainer.training:
            if isinstance(images, Tensor):  # uint8 images: views made here, batched
                views = self.make_views(images)
            else:  # views already made per image in the DataLoader workers
                views = list(images)
            return views, labels, indices
        return eval_view(images, self.cfg.data.mean, self.cfg.data.std), labels, indices

    # ---- training -----------------------------------------------------------------
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Start-up cost as a user feels it: process start to the first step.
        if self.seconds_to_first_step is None:
            self.seconds_to_first_step = round(process_age(), 2)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views, labels, indices = batch
        out = self.ssl_step(views, indices)
        batch_size = views[0].shape[0]
        # Epoch figures are means over all ranks' batches (each rank's loss is
        # its share of the global loss, see nt_xent_loss).
        sync = self.trainer.world_size > 1
        self.log("train/loss", out.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size,
                 sync_dist=sync)
        for name, value in out.logs.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=sync)
        total = out.loss
        if self.online_probe is not None:
            probe_loss, acc = self.online_probe_loss(out.features, labels)
            total = total + probe_loss
            self.log("train/probe_loss", probe_loss, on_step=False, on_epoch=True, batch_size=batch_size,
                     sync_dist=sync)
            self.log("train/probe_top1", acc, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=sync)
        if self.cfg.monitor.collapse and out.embeddings is not None:
            self.log("train/embedding_std", collapse_std(out.embeddings), on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=sync)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False,
                 batch_size=batch_size)
        return total

    def online_probe_loss(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the online probe on detached features (every view's
        features, each with its image's label) and its accuracy in percent."""
        assert self.online_probe is not None
        labels = labels.repeat(features.shape[0] // labels.shape[0])
        known = labels >= 0
        logits = self.online_probe(features.detach()[known])
        loss = F.cross_entropy(logits, labels[known])
        return loss, (logits.argmax(1) == labels[known]).float().mean() * 100

    # ---- monitors: kNN on the test split, online probe accuracy -------------------
    def _reset_validation(self) -> None:
        # Per loader (0: train split, 1: test split): features, labels, indices.
        self._val: List[Dict[str, List[Tensor]]] = [{"f": [], "y": [], "i": [], "p": []} for _ in range(2)]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels, indices = batch
        features = self.backbone(images)
        store = self._val[dataloader_idx]
        store["f"].append(features.float())
        store["y"].append(labels)
        store["i"].append(indices)
        if dataloader_idx == 1 and self.online_probe is not None:
            store["p"].append((self.online_probe(features).argmax(1) == labels).float())

    def on_validation_epoch_end(self) -> None:
        # Each rank saw its share of the split (a DistributedSampler, which pads
        # with repeats); gathered by sample index, every image counts once, as
        # on one device.
        stores, self._val = self._val, []
        self._reset_validation()
        if not (stores[0]["f"] and stores[1]["f"]):
            return
        gathered = []
        for store in stores:
            idx = torch.cat(store["i"])
            gathered.append({k: distributed.gather_by_index(torch.cat(v), idx) for k, v in store.items() if v})
        train, test = gathered
        knn = self.cfg.eval.knn
        top1 = knn_top1(train["f"], train["y"], test["f"], test["y"], self.num_classes, knn.k, knn.temperature)
        # Equal on every rank (all hold the gathered split); sync_dist only
        # keeps Lightning from warning.
        sync = self.trainer.world_size > 1
        self.log("val/knn_top1", top1, prog_bar=True, sync_dist=sync)
        if "p" in test:
            self.log("val/probe_top1", test["p"].mean() * 100, prog_bar=True, sync_dist=sync)

    # ---- optimisation -------------------------------------------------------------
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Called after each real optimizer step (not after every batch when
        gradients accumulate): momentum encoders update here."""

    def encoder_with(self, head: nn.Module) -> nn.Module:
        """Backbone then `head`, as one module for an EMA copy and its updates.
        Built on demand, never assigned: the backbone stays registered once."""
        return nn.Sequential(self.backbone, head)

    def ema_momentum(self, base: float, schedule: str) -> float:
        """The EMA momentum at the current optimizer step (models/momentum.py)."""
        return momentum_at(self.trainer.global_step, int(self.trainer.estimated_stepping_batches), base, schedule)

    def global_batch_size(self) -> int:
        return self.cfg.data.batch_size * self.trainer.world_size * self.cfg.trainer.accumulate_grad_batches

    def param_groups(self, weight_decay: float) -> List[Dict[str, Any]]:
        """Parameter groups for the SSL modules; override to give a head its own lr."""
        groups: List[Dict[str, Any]] = []
        for name, module in self.ssl_modules().items():
            groups += split_decay_groups(module, weight_decay, self.cfg.optimizer.exclude_bias_and_norm, name=name)
        return groups

    def configure_optimizers(self) -> Dict[str, Any]:
        opt_cfg, sched_cfg = self.cfg.optimizer, self.cfg.scheduler
        lr = scale_lr(opt_cfg.lr, self.global_batch_size(), opt_cfg.reference_batch, opt_cfg.lr_scaling)
        groups = self.param_groups(opt_cfg.weight_decay)
        if self.online_probe is not None:
            # Its own fixed lr, no weight decay, no LARS adaptation.
            groups.append({"params": list(self.online_probe.parameters()), "lr": self.cfg.monitor.online_probe_lr,
                           "weight_decay": 0.0, "lars_exclude": True, "name": "online_probe"})
        optimizer = build_optimizer(
            opt_cfg.name, groups, lr=lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay,
            nesterov=opt_cfg.nesterov, eta=opt_cfg.eta, betas=tuple(opt_cfg.betas),
        )
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs))
        scheduler = build_scheduler(
            optimizer, sched_cfg.name, total_steps=total_steps,
            warmup_steps=int(round(sched_cfg.warmup_epochs * steps_per_epoch)),
            warmup_start_ratio=sched_cfg.warmup_start_ratio, final_ratio=sched_cfg.final_ratio,
            milestones=[int(round(epoch * steps_per_epoch)) for epoch in sched_cfg.milestones],
            gamma=sched_cfg.gamma,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- hand-over to the evaluation stages ---------------------------------------
    def export_encoder(self, path: Path) -> None:
        """Write the backbone (and the method's heads) as plain tensors, loadable
        with `torch.load(weights_only=True)` and strictly by `load_encoder`."""
        skipped = ("backbone.", "online_probe.") + tuple(f"{name}." for name in self.not_exported)
        heads = {k: v for k, v in self.state_dict().items() if not k.startswith(skipped)}
        atomic_torch_save(
            {
                "format": ENCODER_FORMAT,
                "method": self.cfg.method.name,
                "method_config": to_plain(self.cfg.method),
                "backbone_config": to_plain(self.cfg.backbone),
                "image_size": int(self.cfg.data.image_size),
                "backbone": {k: v.detach().cpu() for k, v in self.backbone.state_dict().items()},
                "heads": {k: v.detach().cpu() for k, v in heads.items()},
            },
            path,
        )
