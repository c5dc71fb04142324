"""The kNN stage: weighted k-nearest-neighbour accuracy of the frozen
features (Wu et al. 2018, Sec. 3.4), and its random-init twin."""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import torch

from ssl_runner.data.image_folder import UNLABELLED
from ssl_runner.distributed import collectives
from ssl_runner.eval.knn import knn_top1
from ssl_runner.plots import embedding_figure, plots_enabled, save_figure
from ssl_runner.stages.context import RunContext
from ssl_runner.stages.registry import ENCODER, TEST_SPLIT, TRAIN_SPLIT, Stage, register_stage
from ssl_runner.training import log_stage_result

log = logging.getLogger(__name__)


def embedding_plot(ctx: RunContext, f: Dict[str, torch.Tensor], title: str) -> List[str]:
    """knn/embedding.png: a t-SNE map of the test features, coloured by class."""
    labels = f["test_labels"]
    if not len(labels) or bool((labels == UNLABELLED).any()):
        log.info("knn: no embedding.png: the test images have no class labels to colour it by")
        return []
    return save_figure(ctx.run_dir, "knn/embedding.png", lambda: embedding_figure(
        f["test"], labels, ctx.test_images.classes, title, ctx.cfg.seed))


def knn_result(ctx: RunContext, stage: str, encoder: torch.nn.Module,
               embedding_title: str | None = None) -> Dict[str, Any]:
    """kNN top-1 of `encoder`'s features; with `embedding_title`, their t-SNE map too."""
    f = ctx.features(encoder)
    k = ctx.cfg.eval.knn
    top1 = knn_top1(f["train"], f["train_labels"], f["test"], f["test_labels"], ctx.num_classes, k.k, k.temperature)
    if collectives.is_main_process():
        log_stage_result(ctx.cfg, ctx.run_dir, stage, {f"{stage}/top1": top1})
    result = {"top1": round(top1, 2), "k": k.k, "temperature": k.temperature, "train_images": len(f["train"]),
              "test_images": len(f["test"])}
    if embedding_title is not None and plots_enabled(ctx.cfg):
        plots = embedding_plot(ctx, f, f"{embedding_title}: kNN top-1 {top1:.2f} %")
        if plots:
            result["plots"] = plots
    return result


def knn(ctx: RunContext) -> Dict[str, Any]:
    enc = ctx.encoder()
    title = f"{enc.method} encoder ({ctx.cfg.backbone.name})"
    return {**knn_result(ctx, "knn", enc.backbone, embedding_title=title), "checkpoint": enc.path,
            "encoder_method": enc.method}


def knn_random_init(ctx: RunContext) -> Dict[str, Any]:
    """kNN on an untrained encoder of the same architecture: the floor that
    pretraining must beat."""
    return knn_result(ctx, "knn_random_init", ctx.random_init_encoder().backbone)


register_stage(Stage("knn", knn, reads=(ENCODER, TRAIN_SPLIT, TEST_SPLIT), writes=("metrics.csv", "embedding.png"),
                     random_init=Stage("knn_random_init", knn_random_init, reads=(TRAIN_SPLIT, TEST_SPLIT),
                                       writes=("metrics.csv",)),
                     twin_always=True))
