"""The kNN stage: weighted k-nearest-neighbour accuracy of the frozen
features (Wu et al. 2018, Sec. 3.4), and its random-init twin."""

from __future__ import annotations

from typing import Any, Dict

import torch

from ssl_runner.distributed import collectives
from ssl_runner.eval.knn import knn_top1
from ssl_runner.stages.context import RunContext
from ssl_runner.stages.registry import ENCODER, TEST_SPLIT, TRAIN_SPLIT, Stage, register_stage
from ssl_runner.training import log_stage_result


def knn_result(ctx: RunContext, stage: str, encoder: torch.nn.Module) -> Dict[str, Any]:
    f = ctx.features(encoder)
    k = ctx.cfg.eval.knn
    top1 = knn_top1(f["train"], f["train_labels"], f["test"], f["test_labels"], ctx.num_classes, k.k, k.temperature)
    if collectives.is_main_process():
        log_stage_result(ctx.cfg, ctx.run_dir, stage, {f"{stage}/top1": top1})
    return {"top1": round(top1, 2), "k": k.k, "temperature": k.temperature, "train_images": len(f["train"]),
            "test_images": len(f["test"])}


def knn(ctx: RunContext) -> Dict[str, Any]:
    enc = ctx.encoder()
    return {**knn_result(ctx, "knn", enc.backbone), "checkpoint": enc.path, "encoder_method": enc.method}


def knn_random_init(ctx: RunContext) -> Dict[str, Any]:
    """kNN on an untrained encoder of the same architecture: the floor that
    pretraining must beat."""
    return knn_result(ctx, "knn_random_init", ctx.random_init_encoder().backbone)


register_stage(Stage("knn", knn, reads=(ENCODER, TRAIN_SPLIT, TEST_SPLIT), writes=("metrics.csv",),
                     random_init=Stage("knn_random_init", knn_random_init, reads=(TRAIN_SPLIT, TEST_SPLIT),
                                       writes=("metrics.csv",)),
                     twin_always=True))
