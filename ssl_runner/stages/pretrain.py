"""The pretrain stage: the self-supervised method on the training images; it
exports the encoder that the evaluation stages load."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ssl_runner.data.datasets import ImageSet, resize_center_crop
from ssl_runner.data.loaders import eval_loader, pretrain_loader
from ssl_runner.distributed import collectives
from ssl_runner.distributed.batch import batch_sizes
from ssl_runner.label_free_monitor import label_free_callbacks, label_free_result
from ssl_runner.methods import METHODS, build_method
from ssl_runner.models.global_batchnorm import convert_batchnorm, count_synchronised
from ssl_runner.monitors import pretrain_callbacks, seconds_to_first_step
from ssl_runner.plots import PRETRAIN_PANELS, VIEW_IMAGES, curves_figure, plots_enabled, save_figure, views_figure
from ssl_runner.stages.context import RunContext, fit_stage
from ssl_runner.stages.registry import ENCODER, PRETRAIN_SPLIT, TEST_SPLIT, TRAIN_SPLIT, Stage, register_stage
from ssl_runner.training import epoch_record

# Test images the pretext methods' image grids show.
ARTIFACT_IMAGES = 8


def spread_images(images: ImageSet, count: int, size: int) -> torch.Tensor:
    """`count` evenly spaced images of a split (a class-ordered test split then
    shows several classes) as one uint8 batch of `size` x `size` images (an
    image folder's may differ in size)."""
    count = min(count, len(images))
    return torch.stack([resize_center_crop(images.image(i * len(images) // count), size) for i in range(count)])


def pretrain(ctx: RunContext) -> Dict[str, Any]:
    cfg = ctx.cfg
    world_size = collectives.world_size()
    # The images pretraining iterates over: the whole pretrain split (data.pretrain_split, else train)
    # unless the method picks a subset (Exemplar-CNN).
    method_cls = METHODS[cfg.method.name][0]
    pretrain_images = method_cls.pretrain_images(cfg, len(ctx.pretrain_images))
    subset = pretrain_images.indices
    images = ctx.pretrain_images if subset is None else ctx.pretrain_images.select(subset)
    # The online probe trains on the pretraining images' labels: none when any
    # lacks one (an unlabelled folder, STL-10's train+unlabeled).
    method = build_method(cfg, ctx.num_classes if images.has_labels else 0, len(images))
    method.fit_statistics(images)
    if cfg.trainer.sync_batchnorm:
        convert_batchnorm(method, ctx.device.type)
    if cfg.trainer.compile:
        for module in method.ssl_modules().values():
            module.compile()
    batch = batch_sizes(cfg, world_size)
    train = pretrain_loader(cfg.data, images, method.view_maker, world_size,
                            batch_size=batch.per_device, repeats=pretrain_images.repeats, seed=cfg.seed,
                            rank=collectives.rank(), device=ctx.device)
    val = None
    every = cfg.monitor.knn_every_n_epochs
    if every > 0 and ctx.train_images.has_labels:
        val = [eval_loader(cfg.data, ctx.train_images), eval_loader(cfg.data, ctx.test_images)]
    callbacks = [*pretrain_callbacks(cfg, ctx.num_classes), *label_free_callbacks(cfg, ctx.train_images)]
    trainer, metrics = fit_stage(ctx, "pretrain", method, cfg.trainer.max_epochs, train, val,
                                 callbacks=callbacks, check_val_every_n_epoch=max(1, every), limit_val_batches=1.0 if val else 0)
    encoder = ctx.run_dir / "pretrain" / "encoder.pt"
    artifacts: List[str] = []
    if collectives.is_main_process():
        method.export_encoder(encoder)
        artifacts = method.save_artifacts(ctx.run_dir / "pretrain",
                                          spread_images(ctx.test_images, ARTIFACT_IMAGES, cfg.data.image_size))
    plots: List[str] = []
    if plots_enabled(cfg):
        title = f"pretrain: {cfg.method.name} on {cfg.backbone.name}, {trainer.current_epoch} epochs"
        plots += save_figure(ctx.run_dir, "pretrain/curves.png", lambda: curves_figure(
            ctx.run_dir / "pretrain" / "metrics.csv", PRETRAIN_PANELS, title))
        shown = spread_images(images, VIEW_IMAGES, images.fixed_size or cfg.data.image_size)
        plots += save_figure(ctx.run_dir, "pretrain/views.png", lambda: views_figure(method, shown, cfg.seed))
    collectives.barrier()  # the next stage loads it on every rank
    result = {
        "epochs": trainer.current_epoch,
        # Training time summed over the epochs of every attempt (validation included).
        "seconds": round(epoch_record(trainer).seconds, 1),
        "loss": metrics.get("train/loss_epoch"),
        "online_probe_top1": metrics.get("val/probe_top1"),
        "knn_monitor_top1": metrics.get("val/knn_top1"),
        "embedding_std": metrics.get("train/embedding_std"),
        "global_batch_size": batch.global_batch,
        "processes": world_size,
        "synchronised_batchnorm_layers": count_synchronised(method),
        "seconds_to_first_step": seconds_to_first_step(trainer),  # of this attempt
        "checkpoint": "pretrain/checkpoints/last.ckpt",
        "encoder": "pretrain/encoder.pt",
    }
    if artifacts:
        result["artifacts"] = [f"pretrain/{name}" for name in artifacts]
    if plots:
        result["plots"] = plots
    if subset is not None or cfg.data.pretrain_split:
        result.update(pretrain_images=len(images), samples_per_epoch=len(train.dataset))
    # The label-free monitors' figures stay when not finite: null says the measure failed.
    return {**{k: v for k, v in result.items() if v is not None}, **label_free_result(trainer)}


# Reads the test split too: the kNN monitor and the image grids.
register_stage(Stage("pretrain", pretrain, reads=(PRETRAIN_SPLIT, TRAIN_SPLIT, TEST_SPLIT),
                     writes=("checkpoints/last.ckpt", "metrics.csv", "encoder.pt", "<method's image grids>.png",
                             "curves.png", "views.png"),
                     provides=(ENCODER,)))
