"""The config schema: every key a run accepts, with its type and default.

Hydra composes `conf/`; `validate` then merges the result into these
dataclasses, so a misspelt key or a value of the wrong type stops the run
before any work, with a message that names the key. Each method brings its own
schema (registered next to its LightningModule), checked the same way.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from ssl_runner.errors import UserError

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: str = "./data/cifar10"
    # cifar10 only: fetch torchvision's archive when `root` holds neither format.
    download: bool = True
    image_size: int = 32
    # Image folders of mixed sizes: resize the shorter side to `load_size` and
    # centre-crop a square when decoding (null keeps the stored size).
    load_size: Optional[int] = None
    mean: List[float] = field(default_factory=lambda: list(CIFAR10_MEAN))
    std: List[float] = field(default_factory=lambda: list(CIFAR10_STD))
    # Class-balanced, seeded subsets (null = the whole split).
    subset: Optional[int] = None
    test_subset: Optional[int] = None
    # Per-device batch size; the global batch is this x devices x nodes
    # (x gradient accumulation steps).
    batch_size: int = 256
    # Set the global batch instead: batch_size becomes this / (devices x
    # nodes x accumulation), and a value that does not divide is refused.
    global_batch_size: Optional[int] = None
    eval_batch_size: int = 512
    num_workers: int = 0
    # Decode the whole split once into a uint8 tensor (small data sets).
    in_memory: bool = True
    # Keep that tensor on disk between runs (image folders; keyed by the
    # files' paths, sizes and times) in cache_dir, else $SSL_RUNNER_CACHE,
    # else ~/.cache/ssl_runner. Never written beside the data.
    decode_cache: bool = True
    cache_dir: Optional[str] = None
    # Where the random views are made: "device" batched after transfer to the
    # model's device, "cpu" per image in the DataLoader workers.
    views_on: str = "device"


@dataclass
class ViewsConfig:
    """The SimCLR augmentation family (Chen et al. 2020, Appendix A)."""

    name: str = "simclr_cifar"
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    # s in the paper: brightness = contrast = saturation = 0.8 s, hue = 0.2 s.
    jitter_strength: float = 0.5
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_kernel_fraction: float = 0.1
    solarize_p: float = 0.0
    # Rotation by 90/180/270 degrees with this probability (LooC's rotation
    # augmentation; 0 in SimCLR's family).
    rotation_p: float = 0.0


@dataclass
class BackboneConfig:
    # `nin` (or `nin_*`): RotNet's Network-In-Network (models/nin.py); any
    # other name: a ResNet of `depth`.
    name: str = "resnet18"
    depth: int = 18
    # Multiplies every stage's channel count (0.25 gives 16-32-64-128).
    width: float = 1.0
    # 3x3 stride-1 first conv and no max-pool; null = on for images <= 64 px.
    cifar_stem: Optional[bool] = None
    zero_init_residual: bool = False
    # NIN only: its number of conv blocks (at least 3; the paper's CIFAR NIN has 4).
    num_blocks: int = 4


def is_nin(backbone_name: str) -> bool:
    """Whether `backbone.name` selects the Network-In-Network."""
    return backbone_name == "nin" or backbone_name.startswith("nin_")


def backbone_stage_names(backbone: Any) -> List[str]:
    """The stages eval.feature_layer may name for the backbone config `backbone`."""
    if is_nin(backbone.name):
        return [f"block{i}" for i in range(1, backbone.num_blocks + 1)]
    return ["layer1", "layer2", "layer3", "layer4"]


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    # Learning rate at `reference_batch`; scaled to the global batch by `lr_scaling`.
    lr: float = 0.1
    lr_scaling: str = "linear"
    reference_batch: int = 256
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    eta: float = 0.001
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    exclude_bias_and_norm: bool = True


@dataclass
class SchedulerConfig:
    name: str = "warmup_cosine"
    warmup_epochs: float = 10.0
    warmup_start_ratio: float = 0.0
    final_ratio: float = 0.0
    # `steps`: the lr is multiplied by `gamma` at each of these epochs
    # (increasing; fractions allowed), after the warmup.
    milestones: List[float] = field(default_factory=list)
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_epochs: int = 100
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    limit_train_batches: Optional[float] = None
    log_every_n_steps: int = 50
    deterministic: bool = False
    # BatchNorm statistics over the global batch (every BatchNorm layer of
    # backbone and heads; torch's SyncBatchNorm on CUDA, GlobalBatchNorm on CPU).
    sync_batchnorm: bool = False
    # A collective that waits longer than this fails the run (a dead rank
    # must not leave the others hanging).
    collective_timeout_s: int = 1800
    # NHWC memory layout for the backbone's convolutions.
    channels_last: bool = True
    # Keep freed large blocks in the heap (glibc): no page faults on every
    # new batch-sized tensor (ssl_runner/runtime.py; docs/performance.md).
    keep_freed_memory: bool = True
    # torch.compile the backbone and heads (each module in place, so state-dict
    # keys and exported encoders are unchanged); not the LightningModule.
    compile: bool = False
    # "auto": a rich progress bar on a terminal, plain lines otherwise.
    progress: str = "auto"


@dataclass
class LoggerConfig:
    # CSV metrics are always written; "wandb" adds Weights & Biases.
    name: str = "csv"
    project: str = "ssl-runner"
    entity: Optional[str] = None
    # online | offline | disabled; null follows WANDB_MODE.
    mode: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    name: str = "default"
    stages: List[str] = field(default_factory=lambda: ["pretrain", "knn", "linear"])


@dataclass
class KnnConfig:
    k: int = 200
    temperature: float = 0.1


@dataclass
class ClassifierStageConfig:
    """A supervised stage on top of the pretrained encoder (linear or fine-tune)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    # false: train on features of unaugmented images, computed once (fast);
    # true: random crop + flip each epoch, the encoder run every step.
    augment: bool = False


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
class EvalConfig:
    random_baseline: bool = False
    # The backbone stage whose pooled output every evaluation stage uses
    # (layer1..layer4 of a ResNet, block1..blockN of a NIN; the nonlinear
    # stage reads its unpooled map); null: the last stage (the representation h).
    feature_layer: Optional[str] = None
    knn: KnnConfig = field(default_factory=KnnConfig)
    # Also the settings of linear_concat (LooC++), so the two are comparable.
    linear: ClassifierStageConfig = field(default_factory=ClassifierStageConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    nonlinear: NonLinearStageConfig = field(default_factory=NonLinearStageConfig)
    finetune: ClassifierStageConfig = field(
        default_factory=lambda: ClassifierStageConfig(
            epochs=30, lr=0.01, weight_decay=5e-4, nesterov=True, augment=True
        )
    )


@dataclass
class MonitorConfig:
    # A linear classifier on detached features, trained alongside pretraining.
    online_probe: bool = True
    online_probe_lr: float = 0.1
    # Weighted kNN on the test split every N epochs (0: never).
    knn_every_n_epochs: int = 10
    collapse: bool = True


@dataclass
class RunConfig:
    method: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    seed: int = 0
    # An encoder to evaluate instead of pretraining one (pipeline=eval).
    checkpoint: Optional[str] = None


# Values that must be one of a fixed set, checked after the types.
CHOICES: Dict[str, List[str]] = {
    "data.name": ["cifar10", "imagefolder"],
    "data.views_on": ["device", "cpu"],
    "optimizer.name": ["sgd", "lars", "adamw"],
    "optimizer.lr_scaling": ["linear", "sqrt", "none"],
    "scheduler.name": ["warmup_cosine", "constant", "steps"],
    "eval.nonlinear.pool": ["max", "avg"],
    "trainer.progress": ["auto", "rich", "plain", "none"],
    "trainer.strategy": ["auto", "ddp"],
    "trainer.accelerator": ["auto", "cpu", "gpu", "cuda"],
    "logger.name": ["csv", "wandb"],
    "backbone.depth": ["10", "18", "34", "50"],
}
STAGES = ["pretrain", "knn", "linear", "finetune", "linear_concat", "probe_rotation", "probe_color", "nonlinear"]


def unknown_key_message(key: str, schema_hint: Optional[type] = None) -> str:
    """'unknown config key', with the closest key of the schema and the keys
    allowed beside it."""
    parent, _, leaf = str(key).rpartition(".")
    known: List[str] = []
    if schema_hint is not None:
        node: Any = schema_hint
        for part in [p for p in parent.split(".") if p]:
            node = next((f.type for f in fields(node) if f.name == part), None)
            node = _dataclass_of(node)
            if node is None:
                break
        if node is not None:
            known = [f.name for f in fields(node)]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" Did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
    allowed = f" Keys allowed there: {', '.join(sorted(known))}." if known else ""
    return f"unknown config key '{key}'.{hint}{allowed} Fix the spelling in the override or the YAML file."


def _explain(err: OmegaConfBaseException, schema_hint: Optional[type] = None) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return unknown_key_message(str(key), schema_hint)
    if isinstance(err, MissingMandatoryValue):
        return f"config key '{key}' has no value; set it on the command line ({key}=...)."
    if isinstance(err, ValidationError):
        return f"config key '{key}' has a value of the wrong type: {err.msg}. Fix the override or the YAML file."
    return f"invalid config at '{key}': {err.msg if hasattr(err, 'msg') else err}"


def _dataclass_of(tp: Any) -> Optional[type]:
    if isinstance(tp, str):
        tp = globals().get(tp)
    return tp if is_dataclass(tp) else None


def validate(cfg: DictConfig, method_schemas: Dict[str, type]) -> DictConfig:
    """Resolve `cfg` and check it against the schema; return a typed config.

    Raises `UserError` naming the first offending key.
    """
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise UserError(
            f"config key '{missing[0]}' has no value; set it on the command line ({missing[0]}=...)."
            + (f" Also unset: {', '.join(missing[1:])}." if len(missing) > 1 else "")
        )
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise UserError(f"the config could not be resolved: {err}") from None
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    method = plain.pop("method", None)
    if not isinstance(method, dict) or "name" not in method:
        raise UserError(
            "no method chosen. Pass one on the command line, e.g. method=simclr "
            f"(available: {', '.join(sorted(method_schemas))})."
        )
    name = method["name"]
    if name not in method_schemas:
        raise UserError(
            f"unknown method '{name}'. Available methods: {', '.join(sorted(method_schemas))}."
        )
    try:
        typed = OmegaConf.merge(OmegaConf.structured(RunConfig), plain)
    except OmegaConfBaseException as err:
        raise UserError(_explain(err, RunConfig)) from None
    try:
        method_cfg = OmegaConf.merge(OmegaConf.structured(method_schemas[name]), method)
    except OmegaConfBaseException as err:
        err.full_key = f"method.{getattr(err, 'full_key', '') or getattr(err, 'key', '')}"
        msg = _explain(err, None)
        known = [f.name for f in fields(method_schemas[name])]
        raise UserError(f"{msg} Keys of method '{name}': {', '.join(known)}.") from None
    OmegaConf.set_struct(typed, False)
    typed.method = method_cfg
    OmegaConf.set_struct(typed, True)
    _check_values(typed)
    return typed


# Method keys that, where a method has them, take one of a fixed set.
METHOD_CHOICES: Dict[str, List[str]] = {
    "momentum_schedule": ["constant", "cosine"],
    "chromatic_guard": ["none", "drop_channels", "project"],  # relative_loc
    "scale": ["cifar", "cifar64", "96px", "imagenet"],  # relative_loc's patch geometry
    "tile_normalization": ["per_tile", "dataset"],  # jigsaw, pirl
    "mask": ["centre", "random_block", "random_region"],  # context_encoder
}


def _check_values(cfg: DictConfig) -> None:
    for key, allowed in METHOD_CHOICES.items():
        value = cfg.method.get(key)
        if value is not None and str(value) not in allowed:
            raise UserError(f"config key 'method.{key}' is '{value}', which is not one of: {', '.join(allowed)}.")
    check_backbone(cfg)
    _check_optimisation(cfg)
    interpolations = cfg.method.get("interpolations")  # counting
    allowed_modes = ("bilinear", "bicubic", "area", "nearest")
    if interpolations is not None and (not interpolations or any(str(i) not in allowed_modes for i in interpolations)):
        raise UserError(f"config key 'method.interpolations' is {list(interpolations)}; it needs one or more of: "
                        f"{', '.join(allowed_modes)} (e.g. method.interpolations=[bilinear,bicubic]).")
    augmentations = cfg.method.get("augmentations")
    if augmentations is not None:
        from ssl_runner.data.leave_one_out import ATOMIC_AUGMENTATIONS

        names = [str(a) for a in augmentations]
        if not names or len(set(names)) != len(names) or any(a not in ATOMIC_AUGMENTATIONS for a in names):
            raise UserError(
                f"config key 'method.augmentations' is {names}; it needs one or more distinct names from: "
                f"{', '.join(ATOMIC_AUGMENTATIONS)} (e.g. method.augmentations=[color,rotation])."
            )
    for key, allowed in CHOICES.items():
        value = str(OmegaConf.select(cfg, key))
        if value not in allowed:
            raise UserError(
                f"config key '{key}' is '{value}', which is not one of: {', '.join(allowed)}."
            )
    for stage in cfg.pipeline.stages:
        if stage not in STAGES:
            raise UserError(
                f"unknown stage '{stage}' in pipeline.stages. Available stages: {', '.join(STAGES)}."
            )
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.max_epochs", "data.image_size",
                "trainer.num_nodes", "trainer.collective_timeout_s", "trainer.accumulate_grad_batches"):
        if OmegaConf.select(cfg, key) < 1:
            raise UserError(f"config key '{key}' must be at least 1.")
    for key in ("data.subset", "data.test_subset", "data.global_batch_size"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"config key '{key}' must be a positive number of images or null.")
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise UserError("data.mean and data.std need three values, one per RGB channel.")


def check_backbone(cfg: DictConfig) -> None:
    b = cfg.backbone
    if b.width <= 0:
        raise UserError(f"config key 'backbone.width' is {b.width}; it must be positive (1.0: the published widths).")
    if is_nin(b.name) and b.num_blocks < 3:
        raise UserError(f"config key 'backbone.num_blocks' is {b.num_blocks}; the Network-In-Network needs at "
                        "least 3 blocks (the RotNet paper's CIFAR model has 4).")
    layer = cfg.eval.feature_layer
    stages = backbone_stage_names(b)
    if layer is not None and layer not in stages:
        kind = f"a Network-In-Network of {b.num_blocks} blocks" if is_nin(b.name) else "a ResNet"
        raise UserError(f"config key 'eval.feature_layer' is '{layer}', but backbone '{b.name}' ({kind}) has the "
                        f"stages {', '.join(stages[:-1])} and {stages[-1]}: set eval.feature_layer to one of "
                        f"them, or to null for the representation after {stages[-1]}.")


def _check_optimisation(cfg: DictConfig) -> None:
    o, s = cfg.optimizer, cfg.scheduler
    if o.nesterov and o.name == "adamw":
        raise UserError("config key 'optimizer.nesterov' is true, but Nesterov momentum applies to sgd and lars, "
                        "not adamw. Set optimizer.nesterov=false or choose optimizer=sgd.")
    if o.nesterov and o.momentum <= 0:
        raise UserError(f"config key 'optimizer.nesterov' is true with optimizer.momentum={o.momentum}; Nesterov "
                        "momentum needs a positive momentum (e.g. 0.9).")
    milestones = list(s.milestones)
    if any(m < 0 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise UserError(f"config key 'scheduler.milestones' is {milestones}; it needs epochs that are non-negative "
                        "and strictly increasing (e.g. scheduler.milestones=[60,120,160]).")
    if s.gamma <= 0:
        raise UserError(f"config key 'scheduler.gamma' is {s.gamma}; the lr factor at each milestone must be "
                        "positive (e.g. 0.2).")
    if cfg.eval.nonlinear.hidden_dim < 1:
        raise UserError("config key 'eval.nonlinear.hidden_dim' must be at least 1.")


def to_plain(cfg: DictConfig) -> Dict[str, Any]:
    """A JSON-friendly copy of the config (for manifests and hyper-parameters)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


__all__ = [
    "RunConfig",
    "DataConfig",
    "ViewsConfig",
    "BackboneConfig",
    "OptimizerConfig",
    "SchedulerConfig",
    "TrainerConfig",
    "LoggerConfig",
    "PipelineConfig",
    "EvalConfig",
    "MonitorConfig",
    "ClassifierStageConfig",
    "NonLinearStageConfig",
    "backbone_stage_names",
    "check_backbone",
    "is_nin",
    "KnnConfig",
    "validate",
    "to_plain",
]
