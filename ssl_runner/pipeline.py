"""The pipeline: pretrain, then the evaluation stages chained after it.

Each stage has its own subfolder and its own Trainer. Stages hand over through
the run's manifest: pretraining records the encoder it exported, and kNN,
linear and fine-tuning load that file strictly (or `checkpoint=PATH` when the
pipeline has no pretraining). Rerunning a command in the same run folder skips
finished stages and resumes an interrupted one from its `last.ckpt`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from ssl_runner import distributed
from ssl_runner.config import to_plain
from ssl_runner.data.datasets import ImageSet, balanced_subset, load_split, resize_center_crop
from ssl_runner.data.loaders import EpochShuffle, eval_loader, labelled_train_loader, pretrain_loader, shuffled_loader
from ssl_runner.data.views import ViewRecipe, grayscale
from ssl_runner.encoder import LoadedEncoder, adopt_checkpoint_architecture, load_encoder
from ssl_runner.errors import UserError
from ssl_runner.eval.classifier import Classifier
from ssl_runner.eval.features import extract_features
from ssl_runner.eval.knn import knn_top1
from ssl_runner.eval.nonlinear import FeatureMap, NonLinearHead
from ssl_runner.methods import METHODS, build_method
from ssl_runner.models.backbones import TruncatedBackbone, build_backbone
from ssl_runner.models.global_batchnorm import convert_batchnorm, count_synchronised
from ssl_runner.run_dir import SUMMARY, Manifest, hardware_description, summarise
from ssl_runner.safe_io import write_json, write_text
from ssl_runner.runtime import job_age
from ssl_runner.training import (build_trainer, checkpoint_epoch, epoch_record, finish_loggers, log_stage_result,
                                 prepare_stage_folder, resume_path)

log = logging.getLogger(__name__)

BASELINE_STAGE = "knn_random_init"
# With eval.random_baseline and a linear stage, the linear probe of the
# random-init encoder too (cached features only, like `linear`'s default).
LINEAR_BASELINE = "linear_random_init"
# With eval.random_baseline and a nonlinear stage, RotNet's non-linear
# classifier on the random-init encoder too (the paper's "random" rows).
NONLINEAR_BASELINE = "nonlinear_random_init"
# With eval.random_baseline, each property probe in the pipeline is also run on
# the random-init encoder: the floor that says whether pretraining kept or
# destroyed the property.
PROBE_BASELINES = {"probe_rotation": "probe_rotation_random_init", "probe_color": "probe_color_random_init"}


@dataclass
class RunContext:
    """What every stage can reach: the config, the run folder and the data."""

    cfg: DictConfig
    run_dir: Path
    manifest: Manifest
    # Test hook: extra Lightning callbacks for the training stages.
    callbacks: List[Callback] = field(default_factory=list)

    @cached_property
    def train_images(self) -> ImageSet:
        return load_split(self.cfg.data, "train", self.cfg.seed)

    @cached_property
    def test_images(self) -> ImageSet:
        # Labels index the training split's classes in every split.
        classes = self.train_images.classes if self.train_images.has_labels else None
        images = load_split(self.cfg.data, "test", self.cfg.seed, classes=classes)
        if not images.has_labels:
            raise UserError(f"the test split under {self.cfg.data.root} has no class folders, so kNN and linear "
                            "evaluation have nothing to score. Arrange it as test/<class>/<images>.")
        return images

    @property
    def num_classes(self) -> int:
        return len(self.train_images.classes)

    def encoder(self) -> LoadedEncoder:
        """The encoder to evaluate: this run's pretrain export, else `checkpoint=`."""
        path = self.manifest.encoder_path() or (Path(self.cfg.checkpoint) if self.cfg.checkpoint else None)
        if path is None:
            raise UserError(
                "there is no encoder to evaluate: the pipeline has no pretrain stage and no checkpoint was "
                "given. Add pretrain to pipeline.stages, or pass checkpoint=PATH (a pretrain/encoder.pt)."
            )
        encoder = load_encoder(path)
        encoder.backbone.use_channels_last(self.cfg.trainer.channels_last)
        return self.at_feature_layer(encoder)

    def at_feature_layer(self, encoder: LoadedEncoder) -> LoadedEncoder:
        """`encoder` evaluated at eval.feature_layer, when one is set."""
        if self.cfg.eval.feature_layer is not None:
            encoder.backbone = encoder.backbone.truncated(self.cfg.eval.feature_layer)
        return encoder

    def features(self, encoder: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """Train and test features of `encoder`, computed in shards across the
        ranks and gathered: every rank gets all of them, in data-set order."""
        t = self.cfg.trainer
        device = distributed.local_device(t.accelerator)
        train_f, train_l = extract_features(encoder, self.train_images, self.cfg.data, device, t.precision)
        test_f, test_l = extract_features(encoder, self.test_images, self.cfg.data, device, t.precision)
        return {"train": train_f, "train_labels": train_l, "test": test_f, "test_labels": test_l}


def _fit(ctx: RunContext, stage: str, module: L.LightningModule, max_epochs: int,
         train: DataLoader, val: Optional[List[DataLoader]] = None, test: Optional[DataLoader] = None,
         **trainer_overrides: Any) -> Tuple[L.Trainer, Dict[str, float]]:
    """Fit with the stage's checkpoints, resuming from `last.ckpt` if a previous
    attempt left one, then test once if `test` is given. Returns the trainer and
    the figures of the last epoch (kept in the checkpoint, so a resumed stage
    has them even when nothing was left to train)."""
    trainer = build_trainer(ctx.cfg, ctx.run_dir, stage, max_epochs, callbacks=list(ctx.callbacks),
                            **trainer_overrides)
    ckpt = resume_path(ctx.run_dir, stage)
    if isinstance(train.sampler, EpochShuffle):
        # The attempt's first epoch: Lightning makes its iterator before setting the sampler's epoch.
        train.sampler.set_epoch(0 if ckpt is None else checkpoint_epoch(ckpt) + 1)
    if ckpt:
        log.info("%s: resuming from %s", stage, ckpt)
        ctx.manifest.data["stages"][stage]["resumed_from"] = str(Path(ckpt).relative_to(ctx.run_dir))
        ctx.manifest.save()
    try:
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt)
        fit_metrics = dict(epoch_record(trainer).metrics)
        if test is not None:
            trainer.test(module, dataloaders=test, verbose=False)
    finally:
        finish_loggers(trainer.loggers)
    return trainer, fit_metrics


# ---- stages --------------------------------------------------------------------------

# Test images the pretext methods' image grids show.
ARTIFACT_IMAGES = 8


def _spread_images(images: ImageSet, count: int, size: int) -> torch.Tensor:
    """`count` evenly spaced images of a split (a class-ordered test split then
    shows several classes) as one uint8 batch of `size` x `size` images (an
    image folder's may differ in size)."""
    count = min(count, len(images))
    return torch.stack([resize_center_crop(images.image(i * len(images) // count), size) for i in range(count)])


def stage_pretrain(ctx: RunContext) -> Dict[str, Any]:
    cfg = ctx.cfg
    world_size = distributed.world_size()
    # The images pretraining iterates over: the whole split unless the method picks a subset (Exemplar-CNN).
    method_cls = METHODS[cfg.method.name][0]
    subset = method_cls.pretrain_subset(cfg, len(ctx.train_images))
    images = ctx.train_images if subset is None else ctx.train_images.select(subset)
    method = build_method(cfg, ctx.num_classes if ctx.train_images.has_labels else 0, len(images))
    method.fit_statistics(images)
    if cfg.trainer.sync_batchnorm:
        convert_batchnorm(method, distributed.local_device(cfg.trainer.accelerator).type)
    if cfg.trainer.compile:
        for module in method.ssl_modules().values():
            module.compile()
    train = pretrain_loader(cfg.data, images, method.recipe, method.num_views, world_size,
                            repeats=method_cls.pretrain_repeats(cfg), seed=cfg.seed, rank=distributed.rank())
    val = None
    every = cfg.monitor.knn_every_n_epochs
    if every > 0 and ctx.train_images.has_labels:
        val = [eval_loader(cfg.data, ctx.train_images), eval_loader(cfg.data, ctx.test_images)]
    trainer, metrics = _fit(ctx, "pretrain", method, cfg.trainer.max_epochs, train, val,
                            check_val_every_n_epoch=max(1, every), limit_val_batches=1.0 if val else 0)
    encoder = ctx.run_dir / "pretrain" / "encoder.pt"
    artifacts: List[str] = []
    if distributed.is_main_process():
        method.export_encoder(encoder)
        artifacts = method.save_artifacts(ctx.run_dir / "pretrain",
                                          _spread_images(ctx.test_images, ARTIFACT_IMAGES, cfg.data.image_size))
    distributed.barrier()  # the next stage loads it on every rank
    result = {
        "epochs": trainer.current_epoch,
        # Training time summed over the epochs of every attempt (validation included).
        "seconds": round(epoch_record(trainer).seconds, 1),
        "loss": metrics.get("train/loss_epoch"),
        "online_probe_top1": metrics.get("val/probe_top1"),
        "knn_monitor_top1": metrics.get("val/knn_top1"),
        "embedding_std": metrics.get("train/embedding_std"),
        "global_batch_size": cfg.data.batch_size * world_size * cfg.trainer.accumulate_grad_batches,
        "processes": world_size,
        "synchronised_batchnorm_layers": count_synchronised(method),
        "seconds_to_first_step": method.seconds_to_first_step,  # of this attempt
        "checkpoint": "pretrain/checkpoints/last.ckpt",
        "encoder": "pretrain/encoder.pt",
    }
    if artifacts:
        result["artifacts"] = [f"pretrain/{name}" for name in artifacts]
    if subset is not None:
        result.update(pretrain_images=len(images), samples_per_epoch=len(train.dataset))
    return {k: v for k, v in result.items() if v is not None}


def _knn(ctx: RunContext, stage: str, encoder: torch.nn.Module) -> Dict[str, Any]:
    f = ctx.features(encoder)
    k = ctx.cfg.eval.knn
    top1 = knn_top1(f["train"], f["train_labels"], f["test"], f["test_labels"], ctx.num_classes, k.k, k.temperature)
    if distributed.is_main_process():
        log_stage_result(ctx.cfg, ctx.run_dir, stage, {f"{stage}/top1": top1})
    return {"top1": round(top1, 2), "k": k.k, "temperature": k.temperature, "train_images": len(f["train"]),
            "test_images": len(f["test"])}


def stage_knn(ctx: RunContext) -> Dict[str, Any]:
    enc = ctx.encoder()
    return {**_knn(ctx, "knn", enc.backbone), "checkpoint": enc.path, "encoder_method": enc.method}


def _random_init_backbone(ctx: RunContext) -> torch.nn.Module:
    """An untrained encoder of the configured architecture, seeded by `seed`,
    evaluated at eval.feature_layer like the trained one."""
    L.seed_everything(ctx.cfg.seed, verbose=False)
    backbone = build_backbone(ctx.cfg.backbone, ctx.cfg.data.image_size).use_channels_last(
        ctx.cfg.trainer.channels_last)
    return ctx.at_feature_layer(LoadedEncoder(backbone, "random_init", "random initialisation")).backbone


def stage_knn_random_init(ctx: RunContext) -> Dict[str, Any]:
    """kNN on an untrained encoder of the same architecture: the floor that
    pretraining must beat."""
    return _knn(ctx, BASELINE_STAGE, _random_init_backbone(ctx))


def stage_linear_random_init(ctx: RunContext) -> Dict[str, Any]:
    """The linear probe (eval.linear's settings, cached features) on the
    untrained encoder: the floor for the linear figure."""
    return _linear_on_features(ctx, LINEAR_BASELINE, ctx.cfg.eval.linear, ctx.features(_random_init_backbone(ctx)),
                               ctx.num_classes)


def _classifier_stage(ctx: RunContext, stage: str, train_encoder: bool) -> Dict[str, Any]:
    cfg, stage_cfg = ctx.cfg, ctx.cfg.eval[stage]
    enc = ctx.encoder()
    d = cfg.data
    if not (stage_cfg.augment or train_encoder):
        return {**_linear_on_features(ctx, stage, stage_cfg, ctx.features(enc.backbone), ctx.num_classes),
                "encoder_checkpoint": enc.path}
    if train_encoder and cfg.trainer.sync_batchnorm:
        convert_batchnorm(enc.backbone, distributed.local_device(cfg.trainer.accelerator).type)
    module = Classifier(enc.backbone.feature_dim, ctx.num_classes, stage_cfg, encoder=enc.backbone,
                        train_encoder=train_encoder, recipe=_eval_recipe(ctx), mean=list(d.mean), std=list(d.std))
    trainer, metrics = _fit_on_images(ctx, stage, stage_cfg, module)
    return {**_classifier_result(trainer, metrics, stage, stage_cfg), "features": "augmented images",
            "encoder_checkpoint": enc.path}


def _eval_recipe(ctx: RunContext) -> ViewRecipe:
    """Random resized crop + flip only: the standard evaluation augmentation."""
    d = ctx.cfg.data
    return ViewRecipe.simclr(size=d.image_size, mean=list(d.mean), std=list(d.std), jitter_p=0.0, grayscale_p=0.0)


def _fit_on_images(ctx: RunContext, stage: str, stage_cfg: Any, module: Classifier) -> Tuple[L.Trainer,
                                                                                              Dict[str, float]]:
    """Train `module` on the training images for the stage's epochs, then
    score it on the test split."""
    world = distributed.world_size()
    # The stage's batch size is its global batch, as on one device; each rank
    # trains on its share of the images.
    train = labelled_train_loader(ctx.cfg.data, ctx.train_images, module.recipe, stage_cfg.batch_size // world,
                                  seed=ctx.cfg.seed, world_size=world, rank=distributed.rank())
    # Every rank scores the whole test split: no padded duplicates in the accuracy.
    test = eval_loader(ctx.cfg.data, ctx.test_images, stage_cfg.batch_size)
    return _fit(ctx, stage, module, stage_cfg.epochs, train, test=test, use_distributed_sampler=False)


def _nonlinear(ctx: RunContext, stage: str, backbone: torch.nn.Module) -> Dict[str, Any]:
    """RotNet's non-linear classifier (eval/nonlinear.py) on the frozen feature
    map of `backbone` (at eval.feature_layer), trained on the training images
    (crop + flip with eval.nonlinear.augment) and scored on the test split
    after its last epoch."""
    stage_cfg, d = ctx.cfg.eval.nonlinear, ctx.cfg.data
    encoder = FeatureMap(backbone)
    channels, height, width = encoder.output_shape(d.image_size)
    head = NonLinearHead(channels, height, width, ctx.num_classes, stage_cfg.hidden_dim, stage_cfg.pool)
    module = Classifier(head.in_features, ctx.num_classes, stage_cfg, encoder=encoder, head=head,
                        recipe=_eval_recipe(ctx) if stage_cfg.augment else None, mean=list(d.mean), std=list(d.std))
    trainer, metrics = _fit_on_images(ctx, stage, stage_cfg, module)
    layer = getattr(backbone, "upto", None) or backbone.stage_names[-1]
    images = "augmented" if stage_cfg.augment else "unaugmented"
    return {**_classifier_result(trainer, metrics, stage, stage_cfg),
            "features": f"{layer} map {channels}x{height}x{width} ({images} images)",
            "hidden_dim": stage_cfg.hidden_dim, "pool": stage_cfg.pool}


def stage_nonlinear(ctx: RunContext) -> Dict[str, Any]:
    enc = ctx.encoder()
    return {**_nonlinear(ctx, "nonlinear", enc.backbone), "encoder_checkpoint": enc.path}


def stage_nonlinear_random_init(ctx: RunContext) -> Dict[str, Any]:
    """The non-linear classifier (eval.nonlinear's settings) on the untrained
    encoder: the floor for the nonlinear figure (RotNet Table 2's "random")."""
    return _nonlinear(ctx, NONLINEAR_BASELINE, _random_init_backbone(ctx))


def _classifier_result(trainer: L.Trainer, metrics: Dict[str, float], stage: str, stage_cfg: Any) -> Dict[str, Any]:
    return {
        "top1": round(float(trainer.callback_metrics["test/top1"]), 2),
        "top5": round(float(trainer.callback_metrics["test/top5"]), 2),
        "epochs": stage_cfg.epochs,
        "train_loss": metrics.get("train/loss"),
        "checkpoint": f"{stage}/checkpoints/last.ckpt",
    }


def _linear_on_features(ctx: RunContext, stage: str, stage_cfg: Any, f: Dict[str, torch.Tensor],
                        num_classes: int) -> Dict[str, Any]:
    """A linear classifier trained on cached features `f` (train / test, with
    labels), scored on the test features from its last epoch."""
    module = Classifier(f["train"].shape[1], num_classes, stage_cfg)
    # Every rank trains on all the cached features, in the same order, drawn
    # from (seed, epoch) (Lightning sets the sampler's epoch, also on resume),
    # so DDP averages identical gradients: the single-process result, exactly.
    features = TensorDataset(f["train"], f["train_labels"], torch.arange(len(f["train"])))
    train = shuffled_loader(features, stage_cfg.batch_size, ctx.cfg.seed)
    test = DataLoader(TensorDataset(f["test"], f["test_labels"], torch.arange(len(f["test"]))), batch_size=1024)
    trainer, metrics = _fit(ctx, stage, module, stage_cfg.epochs, train, test=test, use_distributed_sampler=False)
    return {**_classifier_result(trainer, metrics, stage, stage_cfg), "features": "cached, unaugmented"}


def stage_linear_concat(ctx: RunContext) -> Dict[str, Any]:
    """LooC++ (Xiao et al. 2021, Sec. 4): the linear probe, with eval.linear's
    settings, on the concatenated hidden layers of every embedding space's
    head instead of the backbone's V."""
    enc = ctx.encoder()
    cls = METHODS.get(enc.method, (None,))[0]
    concat = getattr(cls, "concat_features", None)
    if concat is None:
        raise UserError(
            f"the linear_concat stage evaluates LooC's concatenated heads, but the encoder {enc.path} comes from "
            f"method '{enc.method}', which has one representation. Remove linear_concat from pipeline.stages, or "
            "evaluate a method=looc encoder."
        )
    # The heads read the whole backbone's h, whatever eval.feature_layer says.
    backbone = enc.backbone.backbone if isinstance(enc.backbone, TruncatedBackbone) else enc.backbone
    features = concat(backbone, enc.heads, OmegaConf.create(enc.method_config))
    return {**_linear_on_features(ctx, "linear_concat", ctx.cfg.eval.linear, ctx.features(features),
                                  ctx.num_classes),
            "feature_dim": features.heads.hidden_dim,
            "encoder_checkpoint": enc.path}


class _TransformedInput(torch.nn.Module):
    """`encoder` applied to `transform(x)`: a probe's view of the eval images."""

    def __init__(self, encoder: torch.nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.encoder, self.transform = encoder, transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.transform(x))


def _probe(ctx: RunContext, stage: str, transforms: List[Callable[[torch.Tensor], torch.Tensor]]) -> Dict[str, Any]:
    """How much of a property the frozen features keep: every image of
    class-balanced train / test subsets is shown once per transform, and a
    linear classifier predicts which transform it was (its last-epoch test
    accuracy; chance is 1 / len(transforms)). A `*_random_init` stage probes
    the untrained encoder instead."""
    cfg, probe = ctx.cfg, ctx.cfg.eval.probe
    if stage.endswith("_random_init"):
        enc = LoadedEncoder(_random_init_backbone(ctx), "random_init", "random initialisation")
    else:
        enc = ctx.encoder()
    parts: Dict[str, torch.Tensor] = {}
    for split, images, size in (("train", ctx.train_images, probe.train_images),
                                ("test", ctx.test_images, probe.test_images)):
        if size is not None and size < len(images):
            images = images.select(balanced_subset(images.labels, size, cfg.seed))
        features = []
        for transform in transforms:
            f, _ = extract_features(_TransformedInput(enc.backbone, transform), images, cfg.data,
                                    distributed.local_device(cfg.trainer.accelerator), cfg.trainer.precision)
            features.append(f)
        parts[split] = torch.cat(features)
        parts[f"{split}_labels"] = torch.arange(len(transforms)).repeat_interleave(len(images))
    result = _linear_on_features(ctx, stage, probe, parts, len(transforms))
    return {**result, "chance": round(100 / len(transforms), 2), "train_images": len(parts["train"]) // len(transforms),
            "test_images": len(parts["test"]) // len(transforms), "encoder_checkpoint": enc.path}


def stage_probe_rotation(ctx: RunContext, stage: str = "probe_rotation") -> Dict[str, Any]:
    """Rotation by 0, 90, 180 or 270 degrees, from frozen features: LooC's
    measure of the rotation information an augmentation can destroy (Table 2)."""
    return _probe(ctx, stage, [lambda x, k=k: torch.rot90(x, k, dims=(2, 3)) for k in range(4)])


def stage_probe_color(ctx: RunContext, stage: str = "probe_color") -> Dict[str, Any]:
    """Colour or grayscale, from frozen features: the probe by which SimCLR
    (Chen et al. 2020) showed that its head discards colour (99.3 on h, 97.4
    on g(h)). Grayscale is computed on the unnormalised image, then
    normalised again."""
    mean = torch.tensor(ctx.cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(ctx.cfg.data.std).view(1, 3, 1, 1)

    def to_gray(x: torch.Tensor) -> torch.Tensor:
        m, s = mean.to(x.device, x.dtype), std.to(x.device, x.dtype)
        return (grayscale(x * s + m).expand_as(x) - m) / s

    return _probe(ctx, stage, [lambda x: x, to_gray])


def stage_linear(ctx: RunContext) -> Dict[str, Any]:
    return _classifier_stage(ctx, "linear", train_encoder=False)


def stage_finetune(ctx: RunContext) -> Dict[str, Any]:
    return _classifier_stage(ctx, "finetune", train_encoder=True)


STAGES: Dict[str, Callable[[RunContext], Dict[str, Any]]] = {
    "pretrain": stage_pretrain,
    "knn": stage_knn,
    "linear": stage_linear,
    "finetune": stage_finetune,
    "linear_concat": stage_linear_concat,
    "probe_rotation": stage_probe_rotation,
    "probe_color": stage_probe_color,
    "nonlinear": stage_nonlinear,
    BASELINE_STAGE: stage_knn_random_init,
    LINEAR_BASELINE: stage_linear_random_init,
    NONLINEAR_BASELINE: stage_nonlinear_random_init,
    PROBE_BASELINES["probe_rotation"]: partial(stage_probe_rotation, stage=PROBE_BASELINES["probe_rotation"]),
    PROBE_BASELINES["probe_color"]: partial(stage_probe_color, stage=PROBE_BASELINES["probe_color"]),
}


# ---- the pipeline ----------------------------------------------------------------------

def run_facts(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """The facts every reported figure needs: method, data, backbone, epochs,
    batch size, hardware, seed."""
    return {
        "method": cfg.method.name,
        "data": cfg.data.name,
        "backbone": cfg.backbone.name,
        "seed": cfg.seed,
        "run_dir": str(run_dir),
        "train_images": cfg.data.subset,
        "test_images": cfg.data.test_subset,
        "epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.data.batch_size,
        # The input side of training and evaluation, and the backbone stage the
        # evaluation stages read (null: the representation h).
        "image_size": cfg.data.image_size,
        "feature_layer": cfg.eval.feature_layer,
        "global_batch_size": cfg.data.batch_size * distributed.world_size() * cfg.trainer.accumulate_grad_batches,
        "processes": distributed.world_size(),
        "nodes": cfg.trainer.num_nodes,
        "hardware": hardware_description(cfg.trainer.accelerator),
    }


def planned_stages(cfg: DictConfig) -> List[str]:
    """pipeline.stages, with the method's extra evaluation stages after
    `linear` and, with eval.random_baseline, the random-init twins."""
    stages = list(cfg.pipeline.stages)
    if "linear" in stages:
        extra = getattr(METHODS.get(cfg.method.name, (None,))[0], "extra_eval_stages", ())
        stages[stages.index("linear") + 1:stages.index("linear") + 1] = [s for s in extra if s not in stages]
    if cfg.eval.random_baseline:
        stages += ([BASELINE_STAGE] + ([LINEAR_BASELINE] if "linear" in stages else [])
                   + ([NONLINEAR_BASELINE] if "nonlinear" in stages else [])
                   + [PROBE_BASELINES[s] for s in stages if s in PROBE_BASELINES])
    return stages


def run_pipeline(cfg: DictConfig, run_dir: Path, callbacks: Optional[List[Callback]] = None,
                 on_accepted: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
    """Run the configured stages in `run_dir`; returns the summary it writes.
    `on_accepted` is called on the main process once the folder has accepted
    this config (the CLI records Hydra's files then, never before a refusal)."""
    main = distributed.is_main_process()
    if distributed.world_size() > 1 and not distributed.is_initialized():
        raise RuntimeError("a multi-process config needs its process group; start runs through "
                           "python -m ssl_runner, torchrun or SLURM")
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = planned_stages(cfg)
    if "pretrain" not in stages and cfg.checkpoint:
        # Evaluate the encoder as it was trained, whatever backbone the config names.
        adopt_checkpoint_architecture(cfg)
    # Every rank reads the manifest before rank 0 writes to it (only rank 0
    # writes: the others keep their copy in step without saving it).
    manifest = Manifest.open(run_dir, to_plain(cfg), writable=main)
    distributed.barrier()
    ctx = RunContext(cfg, run_dir, manifest, list(callbacks or []))
    if not all(manifest.is_done(s) for s in stages):
        # Missing or unreadable data fails here, before any stage is recorded.
        ctx.train_images  # noqa: B018
        if any(s != "pretrain" for s in stages) or (
            cfg.monitor.knn_every_n_epochs > 0 and ctx.train_images.has_labels
        ):
            ctx.test_images  # noqa: B018
    if main:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if on_accepted is not None:
            on_accepted()
    facts = run_facts(cfg, run_dir)
    build_summary = partial(summarise, stages=stages, baselines=(BASELINE_STAGE, LINEAR_BASELINE,
                                                                 NONLINEAR_BASELINE, *PROBE_BASELINES.values()))

    def write_summary() -> Dict[str, Any]:
        # Wall clock of this job so far, start-up included (a resumed run counts
        # its last attempt only; a multirun job from its own start).
        summary = {**build_summary(manifest, facts), "wall_seconds": round(job_age(), 1)}
        if main:
            write_json(run_dir / SUMMARY, summary)
        return summary

    for stage in stages:
        if manifest.is_done(stage):
            log.info("%s: already done in %s, skipped", stage, run_dir)
            continue
        if main:
            prepare_stage_folder(run_dir, stage)
        distributed.barrier()
        L.seed_everything(cfg.seed, verbose=False)
        log.info("%s: starting", stage)
        manifest.start(stage)
        try:
            result = STAGES[stage](ctx)
        except BaseException as err:
            manifest.fail(stage, err)
            try:
                write_summary()
            except OSError as write_err:  # a full disk: the stage's own error is the one to report
                log.warning("could not write %s (%s)", run_dir / SUMMARY, write_err)
            raise
        manifest.finish(stage, result)
        log.info("%s: done %s", stage, {k: v for k, v in result.items() if k in ("top1", "loss", "epochs")})
        write_summary()
    return write_summary()
