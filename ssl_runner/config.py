"""The config schema: every key a run accepts, with its type and default.

Hydra composes `conf/`; `validation.validate` then merges the result into these
dataclasses, so a misspelt key or a value of the wrong type stops the run
before any work, with a message that names the key. Each method brings its own
schema (registered next to its LightningModule), checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from ssl_runner.config_eval import ClassifierStageConfig, EvalConfig, KnnConfig, NonLinearStageConfig, ProbeConfig

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: str = "./data/cifar10"
    # cifar10, cifar100, stl10: fetch the data set's archive (torchvision's
    # URL and md5) when `root` holds neither image folders nor its files.
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
    # The split pretraining reads, parts joined by "+" (STL-10's
    # "train+unlabeled": labels are not needed); null: the train split.
    # Evaluation always uses train and test.
    pretrain_split: Optional[str] = None
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
    # SimCLR's augmentation-composition study (Sec. 3, Fig. 5): set, the views
    # are `first` then `second` (names in views.study_augmentations.
    # COMPOSITION_TRANSFORMS; second null or equal to first: first alone),
    # each always applied, instead of the family above (whose crop, flip,
    # jitter, grayscale and blur settings they use). null: the family.
    first: Optional[str] = None
    second: Optional[str] = None


@dataclass
class BackboneConfig:
    # `nin` (or `nin_*`): RotNet's Network-In-Network (models/backbones/nin.py);
    # any other name: a ResNet of `depth` (models/backbones/registry.py).
    name: str = "resnet18"
    depth: int = 18
    # Multiplies every stage's channel count (0.25 gives 16-32-64-128).
    width: float = 1.0
    # 3x3 stride-1 first conv and no max-pool; null = on for images <= 64 px.
    cifar_stem: Optional[bool] = None
    zero_init_residual: bool = False
    # NIN only: its number of conv blocks (at least 3; the paper's CIFAR NIN has 4).
    num_blocks: int = 4


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
    # Plain progress lines: one every this many optimizer steps or seconds,
    # whichever comes first (and one at each epoch's end).
    progress_every_steps: int = 50
    progress_every_seconds: float = 60.0
    # Also save last.ckpt every this many minutes of training, mid-epoch
    # (null: at epoch ends only); a killed run loses at most this much.
    checkpoint_every_minutes: Optional[float] = 10.0


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
    # curves.png, views.png and embedding.png in the stage folders (ssl_runner/plots.py).
    plots: bool = True


@dataclass
class MonitorConfig:
    # A linear classifier on detached features, trained alongside pretraining.
    online_probe: bool = True
    online_probe_lr: float = 0.1
    # Weighted kNN on the test split every N epochs (0: never).
    knn_every_n_epochs: int = 10
    collapse: bool = True
    # RankMe, alignment and uniformity of the backbone's features at every epoch's end, on
    # label_free_images training images fixed for the run (label_free_monitor.py): no labels needed.
    label_free: bool = True
    label_free_images: int = 1024


@dataclass
class ObjectiveConfig:
    # The summary.json value a job returns to a sweeper (ssl_runner/sweeps/objective.py):
    # a dotted key (stages.knn.top1, stages.pretrain.loss, baseline.knn_random_init.top1)
    # or "auto", the top-1 of the last evaluation stage.
    key: str = "auto"
    # maximize | minimize (a loss).
    direction: str = "maximize"


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
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    seed: int = 0
    # An encoder to evaluate instead of pretraining one (pipeline=eval).
    checkpoint: Optional[str] = None


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
    "ObjectiveConfig",
    "ClassifierStageConfig",
    "ProbeConfig",
    "NonLinearStageConfig",
    "KnnConfig",
    "to_plain",
]
