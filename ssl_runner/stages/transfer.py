"""The transfer stage: the pretrained encoder, frozen, evaluated on other data
sets (eval.transfer): weighted kNN (eval.knn's k and temperature) and the
linear probe on cached features of unaugmented images (eval.linear's
settings), each from the target's train split to its test split.

A target's images are read at the pretraining data's image size and
normalised with its mean and std (`RunContext.transfer_targets`). The
results are keyed by target under `targets` (summary.json's
stages.transfer.targets.<target>); each linear probe has its own folder,
transfer/<target>/, with its checkpoint, metrics and curves. The stage reads
no test split of the pretraining data, so it is never `objective.key=auto`'s
figure (registry.evaluation_stages).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Dict, List

import torch

from ssl_runner.checkpoints import prepare_stage_folder
from ssl_runner.distributed import collectives
from ssl_runner.eval.features import extract_features
from ssl_runner.eval.knn import knn_top1
from ssl_runner.protocols import classifier_protocol, feature_source, knn_protocol
from ssl_runner.stages.classifiers import linear_on_features
from ssl_runner.stages.context import RunContext, TransferTarget
from ssl_runner.stages.registry import ENCODER, TRANSFER_DATA, Stage, register_stage

log = logging.getLogger(__name__)

STAGE = "transfer"


def target_folders(targets: list) -> Dict[str, str]:
    """Each target's folder under the stage's, a file-name-safe form of its
    name ("imagefolder:/data/pets" -> "transfer/imagefolder_data_pets"),
    numbered where two would coincide."""
    folders: Dict[str, str] = {}
    for target in targets:
        folder = f"{STAGE}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', target).strip('_.') or 'target'}"
        while folder in folders.values():
            folder += "_"
        folders[target] = folder
    return folders


def target_features(ctx: RunContext, encoder: torch.nn.Module, target: TransferTarget) -> Dict[str, torch.Tensor]:
    """Train and test features of a target (computed in shards, gathered on every rank)."""
    precision = ctx.cfg.trainer.precision
    features: Dict[str, torch.Tensor] = {}
    for split, images in (("train", target.train), ("test", target.test)):
        features[split], features[f"{split}_labels"] = extract_features(encoder, images, target.data, ctx.device,
                                                                        precision)
    return features


def transfer(ctx: RunContext) -> Dict[str, Any]:
    cfg = ctx.cfg
    enc = ctx.encoder()
    k = cfg.eval.knn
    folders = target_folders(list(ctx.transfer_targets))
    results: Dict[str, Any] = {}
    plots: List[str] = []  # every target's curves.png, listed where the summary's readers look
    for name, target in ctx.transfer_targets.items():
        f = target_features(ctx, enc.backbone, target)
        num_classes = len(target.train.classes)
        knn = knn_top1(f["train"], f["train_labels"], f["test"], f["test_labels"], num_classes, k.k, k.temperature)
        if collectives.is_main_process():
            prepare_stage_folder(ctx.run_dir, folders[name])  # a previous attempt's checkpoint: resumed from
        collectives.barrier()
        linear = linear_on_features(ctx, folders[name], cfg.eval.linear, f, num_classes, enc.method)
        results[name] = {
            "knn_top1": round(knn, 2),
            "linear_top1": linear["top1"],
            "linear_top5": linear["top5"],
            "train_images": len(f["train"]),
            "test_images": len(f["test"]),
            "classes": num_classes,
            "protocol": {
                "name": f"{STAGE}:{name}",
                "knn": knn_protocol(cfg),
                "linear": classifier_protocol("linear", cfg.eval.linear, "frozen",
                                              f"{feature_source(cfg)}, {linear['features']}"),
                # The target's images as the encoder reads them.
                "images": f"{target.data.image_size} px, normalised with {cfg.data.name}'s mean and std",
            },
            "checkpoint": linear["checkpoint"],
        }
        plots += linear.get("plots", [])
        log.info("transfer to %s: kNN top-1 %.2f %%, linear top-1 %.2f %% (%d classes, %d train / %d test images)",
                 name, knn, linear["top1"], num_classes, len(f["train"]), len(f["test"]))
    return {"targets": results, "encoder_checkpoint": enc.path, **({"plots": plots} if plots else {})}


# Reads no split of the pretraining data: its targets are decoded by
# RunContext.transfer_targets.
register_stage(Stage(STAGE, transfer, reads=(ENCODER, TRANSFER_DATA),
                     writes=("<target>/checkpoints/last.ckpt", "<target>/metrics.csv", "<target>/curves.png")))
