"""Semi-supervised evaluation (SimCLR, Chen et al. 2020, Sec. 6 and Appendix
B.5): the finetune stage on a fraction of the labels. The whole network,
backbone and a new linear head, is fine-tuned on a class-balanced, seeded
1 % or 10 % of the labelled training images (nested: the 1 % inside the
10 %), then scored on the whole test split; each stage has its random-init
twin, the same fine-tuning from an untrained encoder: what pretraining adds
when labels are scarce. Settings: eval.semi, shared by both fractions but
the epochs."""

from __future__ import annotations

from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from ssl_runner.config import ClassifierStageConfig
from ssl_runner.data.label_subsets import LABEL_FRACTIONS, label_fraction_subset
from ssl_runner.encoder import LoadedEncoder
from ssl_runner.errors import UserError
from ssl_runner.protocols import classifier_protocol
from ssl_runner.stages.classifiers import (CLASSIFIER_FILES, classifier_curves, classifier_on_images,
                                           classifier_result)
from ssl_runner.stages.context import RunContext
from ssl_runner.stages.registry import ENCODER, TEST_SPLIT, TRAIN_SPLIT, Stage, register_stage


def semi_settings(cfg: DictConfig, tag: str) -> DictConfig:
    """eval.semi's shared settings with the epochs of the `tag` fraction: the
    settings of one stage, as the classifier stages read them."""
    shared = {k: v for k, v in cfg.eval.semi.items() if not k.startswith("epochs_")}
    return OmegaConf.structured(ClassifierStageConfig(epochs=cfg.eval.semi[f"epochs_{tag}"], **shared))


def _semi(ctx: RunContext, stage: str, tag: str, enc: LoadedEncoder) -> Dict[str, Any]:
    """Fine-tune `enc`'s backbone with a new linear head on the `tag` fraction
    of the labelled training images; its last-epoch test accuracy."""
    fraction, stage_cfg, seed = LABEL_FRACTIONS[tag], semi_settings(ctx.cfg, tag), ctx.cfg.seed
    if not ctx.train_images.has_labels:  # validation refuses an image folder without classes before any work
        raise UserError(f"the {stage} stage fine-tunes on {fraction:.0%} of the training labels, but the train "
                        f"split under {ctx.cfg.data.root} has none. Arrange it as train/<class>/<images>, or "
                        f"remove {stage} from pipeline.stages.")
    labelled = ctx.train_images.select(label_fraction_subset(ctx.train_images.labels, fraction, seed))
    # Fewer labelled images than one batch still train: each epoch is then one
    # step on all of them (the loader keeps its last, incomplete batch).
    trainer, metrics = classifier_on_images(ctx, stage, stage_cfg, enc.backbone, train_encoder=True,
                                            train_images=labelled)
    images = "augmented" if stage_cfg.augment else "unaugmented"
    protocol = {**classifier_protocol("semi", stage_cfg, "fine-tuned", f"{len(labelled)} labelled training images"),
                "label_fraction": fraction, "labelled_images": len(labelled), "fine_tune": "whole network",
                "weight_decay": stage_cfg.weight_decay, "seed": seed}
    return {**classifier_result(trainer, metrics, stage, stage_cfg), "label_fraction": fraction,
            "labelled_images": len(labelled), "features": f"fine-tuned, {images} images", "protocol": protocol,
            **classifier_curves(ctx, stage, stage_cfg.epochs, enc.method)}


def _register(tag: str) -> None:
    name, twin = f"semi_{tag}", f"semi_{tag}_random_init"

    def trained(ctx: RunContext) -> Dict[str, Any]:
        enc = ctx.encoder()
        return {**_semi(ctx, name, tag, enc), "encoder_checkpoint": enc.path}

    register_stage(Stage(name, trained, (ENCODER, TRAIN_SPLIT, TEST_SPLIT), CLASSIFIER_FILES,
                         random_init=Stage(twin, lambda ctx: _semi(ctx, twin, tag, ctx.random_init_encoder()),
                                           (TRAIN_SPLIT, TEST_SPLIT), CLASSIFIER_FILES)))


for _tag in LABEL_FRACTIONS:
    _register(_tag)
