"""Supervised classifiers on the pretrained encoder: the linear probe, the
LooC++ probe on concatenated heads, fine-tuning, RotNet's non-linear
classifier, and the random-init twins of the linear and non-linear ones.

A classifier trains on cached features of unaugmented images when it can
(fast: the encoder runs once), else on the images, with the encoder in the
loop each step (augmentation, fine-tuning, a feature map)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from ssl_runner.data.datasets import ImageSet
from ssl_runner.data.loaders import eval_loader, labelled_train_loader, shuffled_loader
from ssl_runner.views.recipe import ViewRecipe
from ssl_runner.distributed import collectives
from ssl_runner.errors import UserError
from ssl_runner.eval.classifier import Classifier
from ssl_runner.eval.features import standardise
from ssl_runner.eval.nonlinear import FeatureMap, NonLinearHead
from ssl_runner.methods import METHODS, BaseMethod
from ssl_runner.models.backbones import TruncatedBackbone
from ssl_runner.models.global_batchnorm import convert_batchnorm
from ssl_runner.plots import CLASSIFIER_PANELS, curves_figure, plots_enabled, save_figure
from ssl_runner.stages.context import RunContext, fit_stage
from ssl_runner.stages.registry import ENCODER, TEST_SPLIT, TRAIN_SPLIT, Stage, register_stage

CLASSIFIER_FILES = ("checkpoints/last.ckpt", "metrics.csv", "curves.png")


def classifier_curves(ctx: RunContext, stage: str, epochs: int, encoder_method: Optional[str]) -> Dict[str, Any]:
    """{"plots": ["<stage>/curves.png"]}: the classifier's loss and accuracy
    by epoch, from its metrics.csv (empty when pictures are off or fail)."""
    if not plots_enabled(ctx.cfg):
        return {}
    encoder = ("a random-init" if stage.endswith("_random_init") else f"the {encoder_method or 'pretrained'}")
    title = f"{stage}: {epochs} epochs on {encoder} encoder ({ctx.cfg.backbone.name})"
    plots = save_figure(ctx.run_dir, f"{stage}/curves.png", lambda: curves_figure(
        ctx.run_dir / stage / "metrics.csv", CLASSIFIER_PANELS, title))
    return {"plots": plots} if plots else {}


def linear_on_features(ctx: RunContext, stage: str, stage_cfg: Any, f: Dict[str, torch.Tensor],
                       num_classes: int, encoder_method: Optional[str] = None) -> Dict[str, Any]:
    """A linear classifier trained on cached features `f` (train / test, with
    labels), scored on the test features from its last epoch; `encoder_method`
    names the features' encoder in its curves' title."""
    module = Classifier(f["train"].shape[1], num_classes, stage_cfg)
    train_features, test_features = standardise(f["train"], f["test"])
    # Every rank trains on all the cached features, in the same order, drawn
    # from (seed, epoch) (Lightning sets the sampler's epoch, also on resume),
    # so DDP averages identical gradients: the single-process result, exactly.
    features = TensorDataset(train_features, f["train_labels"], torch.arange(len(f["train"])))
    train = shuffled_loader(features, stage_cfg.batch_size, ctx.cfg.seed)
    test = DataLoader(TensorDataset(test_features, f["test_labels"], torch.arange(len(f["test"]))), batch_size=1024)
    trainer, metrics = fit_stage(ctx, stage, module, stage_cfg.epochs, train, test=test,
                                 use_distributed_sampler=False)
    return {**classifier_result(trainer, metrics, stage, stage_cfg), "features": "cached, unaugmented, standardised",
            **classifier_curves(ctx, stage, stage_cfg.epochs, encoder_method)}


def classifier_result(trainer: L.Trainer, metrics: Dict[str, float], stage: str, stage_cfg: Any) -> Dict[str, Any]:
    return {
        "top1": round(float(trainer.callback_metrics["test/top1"]), 2),
        "top5": round(float(trainer.callback_metrics["test/top5"]), 2),
        "epochs": stage_cfg.epochs,
        "train_loss": metrics.get("train/loss"),
        "checkpoint": f"{stage}/checkpoints/last.ckpt",
    }


def eval_recipe(ctx: RunContext) -> ViewRecipe:
    """Random resized crop + flip only: the standard evaluation augmentation."""
    d = ctx.cfg.data
    return ViewRecipe.simclr(size=d.image_size, mean=list(d.mean), std=list(d.std), jitter_p=0.0, grayscale_p=0.0)


def fit_on_images(ctx: RunContext, stage: str, stage_cfg: Any, module: Classifier,
                  train_images: Optional[ImageSet] = None) -> Tuple[L.Trainer, Dict[str, float]]:
    """Train `module` on `train_images` (default: the training split) for the
    stage's epochs, then score it on the test split."""
    world = collectives.world_size()
    # The stage's batch size is its global batch, as on one device; each rank
    # trains on its share of the images (the last batch is kept, however small).
    images = ctx.train_images if train_images is None else train_images
    train = labelled_train_loader(ctx.cfg.data, images, module.recipe, stage_cfg.batch_size // world,
                                  seed=ctx.cfg.seed, world_size=world, rank=collectives.rank())
    # Every rank scores the whole test split: no padded duplicates in the accuracy.
    test = eval_loader(ctx.cfg.data, ctx.test_images, stage_cfg.batch_size)
    return fit_stage(ctx, stage, module, stage_cfg.epochs, train, test=test, use_distributed_sampler=False)


def _classifier_stage(ctx: RunContext, stage: str, train_encoder: bool) -> Dict[str, Any]:
    stage_cfg = ctx.cfg.eval[stage]
    enc = ctx.encoder()
    if not (stage_cfg.augment or train_encoder):
        return {**linear_on_features(ctx, stage, stage_cfg, ctx.features(enc.backbone), ctx.num_classes,
                                     enc.method), "encoder_checkpoint": enc.path}
    trainer, metrics = classifier_on_images(ctx, stage, stage_cfg, enc.backbone, train_encoder)
    images = "augmented" if stage_cfg.augment else "unaugmented"
    return {**classifier_result(trainer, metrics, stage, stage_cfg), "features": f"{images} images",
            "encoder_checkpoint": enc.path, **classifier_curves(ctx, stage, stage_cfg.epochs, enc.method)}


def classifier_on_images(ctx: RunContext, stage: str, stage_cfg: Any, backbone: torch.nn.Module,
                         train_encoder: bool, train_images: Optional[ImageSet] = None) -> Tuple[L.Trainer,
                                                                                               Dict[str, float]]:
    """A new linear head on `backbone`, trained with it (`train_encoder`:
    fine-tuning) or on its frozen features, on `train_images` (default: the
    training split; crop + flip with `stage_cfg.augment`), then scored on
    the test split."""
    d = ctx.cfg.data
    if train_encoder and ctx.cfg.trainer.sync_batchnorm:
        convert_batchnorm(backbone, ctx.device.type)
    module = Classifier(backbone.feature_dim, ctx.num_classes, stage_cfg, encoder=backbone,
                        train_encoder=train_encoder, recipe=eval_recipe(ctx) if stage_cfg.augment else None,
                        mean=list(d.mean), std=list(d.std))
    return fit_on_images(ctx, stage, stage_cfg, module, train_images)


def linear(ctx: RunContext) -> Dict[str, Any]:
    return _classifier_stage(ctx, "linear", train_encoder=False)


def finetune(ctx: RunContext) -> Dict[str, Any]:
    return _classifier_stage(ctx, "finetune", train_encoder=True)


def linear_random_init(ctx: RunContext) -> Dict[str, Any]:
    """The linear probe (eval.linear's settings, cached features) on the
    untrained encoder: the floor for the linear figure."""
    return linear_on_features(ctx, "linear_random_init", ctx.cfg.eval.linear,
                              ctx.features(ctx.random_init_encoder().backbone), ctx.num_classes)


def linear_concat(ctx: RunContext) -> Dict[str, Any]:
    """LooC++ (Xiao et al. 2021, Sec. 4): the linear probe, with eval.linear's
    settings, on the concatenated hidden layers of every embedding space's
    head instead of the backbone's V."""
    enc = ctx.encoder()
    cls = METHODS.get(enc.method, (BaseMethod,))[0]
    # The heads read the whole backbone's h, whatever eval.feature_layer says.
    backbone = enc.backbone.backbone if isinstance(enc.backbone, TruncatedBackbone) else enc.backbone
    features = cls.concat_features(backbone, enc.heads, OmegaConf.create(enc.method_config))
    if features is None:
        raise UserError(
            f"the linear_concat stage evaluates LooC's concatenated heads, but the encoder {enc.path} comes from "
            f"method '{enc.method}', which has one representation. Remove linear_concat from pipeline.stages, or "
            "evaluate a method=looc encoder."
        )
    return {**linear_on_features(ctx, "linear_concat", ctx.cfg.eval.linear, ctx.features(features),
                                 ctx.num_classes, enc.method),
            "feature_dim": features.heads.hidden_dim,
            "encoder_checkpoint": enc.path}


def _nonlinear(ctx: RunContext, stage: str, backbone: torch.nn.Module,
               encoder_method: Optional[str] = None) -> Dict[str, Any]:
    """RotNet's non-linear classifier (eval/nonlinear.py) on the frozen feature
    map of `backbone` (at eval.feature_layer), trained on the training images
    (crop + flip with eval.nonlinear.augment) and scored on the test split
    after its last epoch."""
    stage_cfg, d = ctx.cfg.eval.nonlinear, ctx.cfg.data
    encoder = FeatureMap(backbone)
    channels, height, width = encoder.output_shape(d.image_size)
    head = NonLinearHead(channels, height, width, ctx.num_classes, stage_cfg.hidden_dim, stage_cfg.pool)
    module = Classifier(head.in_features, ctx.num_classes, stage_cfg, encoder=encoder, head=head,
                        recipe=eval_recipe(ctx) if stage_cfg.augment else None, mean=list(d.mean), std=list(d.std))
    trainer, metrics = fit_on_images(ctx, stage, stage_cfg, module)
    layer = getattr(backbone, "upto", None) or backbone.stage_names[-1]
    images = "augmented" if stage_cfg.augment else "unaugmented"
    return {**classifier_result(trainer, metrics, stage, stage_cfg),
            "features": f"{layer} map {channels}x{height}x{width} ({images} images)",
            "hidden_dim": stage_cfg.hidden_dim, "pool": stage_cfg.pool,
            **classifier_curves(ctx, stage, stage_cfg.epochs, encoder_method)}


def nonlinear(ctx: RunContext) -> Dict[str, Any]:
    enc = ctx.encoder()
    return {**_nonlinear(ctx, "nonlinear", enc.backbone, enc.method), "encoder_checkpoint": enc.path}


def nonlinear_random_init(ctx: RunContext) -> Dict[str, Any]:
    """The non-linear classifier (eval.nonlinear's settings) on the untrained
    encoder: the floor for the nonlinear figure (RotNet Table 2's "random")."""
    return _nonlinear(ctx, "nonlinear_random_init", ctx.random_init_encoder().backbone)


_READS = (ENCODER, TRAIN_SPLIT, TEST_SPLIT)
register_stage(Stage("linear", linear, _READS, CLASSIFIER_FILES,
                     random_init=Stage("linear_random_init", linear_random_init, (TRAIN_SPLIT, TEST_SPLIT),
                                       CLASSIFIER_FILES)))
register_stage(Stage("finetune", finetune, _READS, CLASSIFIER_FILES))
register_stage(Stage("linear_concat", linear_concat, _READS, CLASSIFIER_FILES))
register_stage(Stage("nonlinear", nonlinear, _READS, CLASSIFIER_FILES,
                     random_init=Stage("nonlinear_random_init", nonlinear_random_init, (TRAIN_SPLIT, TEST_SPLIT),
                                       CLASSIFIER_FILES)))
