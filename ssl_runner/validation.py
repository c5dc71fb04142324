"""Checking a composed config: types against the schema (`config.py`), then
values: the fixed choice lists (each taken from the registry that owns the
names), ranges, the backbone's own checks, and the chosen method's
`check_config`. A failure is a `UserError` naming the key, with a close
match for a misspelt one.
"""

from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from ssl_runner import config as schema
from ssl_runner import config_eval as eval_schema
from ssl_runner.backbone_export import check_exportable
from ssl_runner.data.archives import DATA_NAMES, data_reference
from ssl_runner.data.image_folder import list_image_folder
from ssl_runner.errors import UserError
from ssl_runner.models.backbones import check_backbone
from ssl_runner.optim import LR_SCALING_RULES, OPTIMIZERS, SCHEDULES
from ssl_runner.sweeps.objective import check_label_free_objective
from ssl_runner.views.study_augmentations import COMPOSITION_TRANSFORMS

# Values that must be one of a fixed set, checked after the types.
CHOICES: Dict[str, List[str]] = {
    "data.name": DATA_NAMES,
    "data.views_on": ["device", "cpu"],
    "optimizer.name": list(OPTIMIZERS),
    "optimizer.lr_scaling": list(LR_SCALING_RULES),
    "scheduler.name": list(SCHEDULES),
    "eval.nonlinear.pool": ["max", "avg"],
    "trainer.progress": ["auto", "rich", "plain", "none"],
    "trainer.strategy": ["auto", "ddp"],
    "trainer.accelerator": ["auto", "cpu", "gpu", "cuda"],
    "logger.name": ["csv", "wandb"],
}


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
    if isinstance(tp, str):  # the schema's annotations are strings (postponed evaluation)
        tp = getattr(schema, tp, None) or getattr(eval_schema, tp, None)
    return tp if is_dataclass(tp) else None


def validate(cfg: DictConfig, methods: Mapping[str, Tuple[Any, type]], stages: Sequence[str]) -> DictConfig:
    """Resolve `cfg` and check it against the schema, then the chosen method's
    section against its own schema and its `check_config`; return a typed
    config. `methods`: the method registry (`methods.registry.METHODS`, name ->
    (method class, config schema)); `stages`: the names pipeline.stages may
    list (`stages.stage_names()`); both passed in because the methods and
    stages import this module.

    Raises `UserError` naming the first offending key.
    """
    method_schemas = {name: schema for name, (_, schema) in methods.items()}
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
        typed = OmegaConf.merge(OmegaConf.structured(schema.RunConfig), plain)
    except OmegaConfBaseException as err:
        raise UserError(_explain(err, schema.RunConfig)) from None
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
    _check_values(typed, stages)
    methods[name][0].check_config(typed)
    return typed


def check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuse `value` of config key `key` (full path) unless it is one of `allowed`."""
    if str(value) not in allowed:
        raise UserError(f"config key '{key}' is '{value}', which is not one of: {', '.join(allowed)}.")


def _check_values(cfg: DictConfig, stages: Sequence[str]) -> None:
    check_backbone(cfg)
    _check_optimisation(cfg)
    _check_composition_views(cfg)
    for key, allowed in CHOICES.items():
        check_choice(key, OmegaConf.select(cfg, key), allowed)
    for stage in cfg.pipeline.stages:
        if stage not in stages:
            raise UserError(
                f"unknown stage '{stage}' in pipeline.stages. Available stages: {', '.join(stages)}."
            )
    check_exportable(cfg)
    _check_data_sets(cfg)
    _check_labelled_train_split(cfg)
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.max_epochs", "data.image_size",
                "eval.semi.batch_size", "eval.semi.epochs_1pct", "eval.semi.epochs_10pct",
                "trainer.num_nodes", "trainer.collective_timeout_s", "trainer.accumulate_grad_batches"):
        if OmegaConf.select(cfg, key) < 1:
            raise UserError(f"config key '{key}' must be at least 1.")
    for key in ("data.subset", "data.test_subset", "data.global_batch_size", "eval.transfer_subset",
                "eval.transfer_test_subset"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"config key '{key}' must be a positive number of images or null.")
    if len(cfg.data.mean) != 3 or len(cfg.data.std) != 3:
        raise UserError("data.mean and data.std need three values, one per RGB channel.")
    if cfg.monitor.label_free and cfg.monitor.label_free_images < 2:
        raise UserError("config key 'monitor.label_free_images' must be at least 2 (uniformity compares pairs "
                        "of images); the default is 1024. Or set monitor.label_free=false.")
    check_label_free_objective(cfg.objective.key, cfg.monitor.label_free)


def _check_labelled_train_split(cfg: DictConfig) -> None:
    """The semi-supervised stages fine-tune on the training labels: refuse
    them before any work when train/ is an image folder with no class
    folders (a missing folder is load_split's to report)."""
    semi = [s for s in cfg.pipeline.stages if s.startswith("semi_")]
    train_dir = Path(cfg.data.root) / "train"
    if semi and train_dir.is_dir() and not list_image_folder(train_dir)[2]:
        raise UserError(
            f"pipeline.stages has {', '.join(semi)}, which fine-tune on a fraction of the training labels, but "
            f"{train_dir} has no class folders: its images are unlabelled. Arrange it as train/<class>/<images>, "
            "or remove the semi-supervised stages from pipeline.stages."
        )


def _check_data_sets(cfg: DictConfig) -> None:
    """data.pretrain_split never reads the test split; eval.transfer names
    data sets (`name` or `name:PATH`), each once, and the transfer stage has one."""
    split = cfg.data.pretrain_split
    if split is not None and ("" in split.split("+") or "test" in split.split("+")):
        raise UserError(f"config key 'data.pretrain_split' is '{split}'; it names the splits pretraining reads, "
                        "joined by + (e.g. train+unlabeled), and never the test split the evaluation scores on. "
                        "Fix it, or set it to null for the train split.")
    targets = list(cfg.eval.transfer)
    if "transfer" in cfg.pipeline.stages and not targets:
        raise UserError("pipeline.stages has the transfer stage but eval.transfer names no data set to transfer "
                        "to. Set e.g. eval.transfer=[cifar100] (or [imagefolder:PATH]), or remove transfer from "
                        "pipeline.stages.")
    for target in targets:
        name, root = data_reference(target)
        if name not in DATA_NAMES or root == "" or (name == "imagefolder" and root is None):
            raise UserError(f"eval.transfer has '{target}', which is not a data set: each target is one of "
                            f"{', '.join(n for n in DATA_NAMES if n != 'imagefolder')} (from its conf/data file's "
                            "root), or NAME:PATH such as imagefolder:/data/pets (train/<class>/ and test/<class>/ "
                            "under PATH).")
        if targets.count(target) > 1:
            raise UserError(f"eval.transfer names '{target}' twice; list each target once.")


def _check_composition_views(cfg: DictConfig) -> None:
    """views.first / views.second: names of the composition study's transformations, second only after first."""
    first, second = cfg.views.first, cfg.views.second
    for key, value in (("views.first", first), ("views.second", second)):
        if value is not None and value not in COMPOSITION_TRANSFORMS:
            close = difflib.get_close_matches(str(value), COMPOSITION_TRANSFORMS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"config key '{key}' is '{value}', which is not one of the augmentation-composition "
                            f"study's transformations: {', '.join(COMPOSITION_TRANSFORMS)}.{hint} Fix the override "
                            "or the YAML file (null: SimCLR's family of views).")
    if first is None and second is not None:
        raise UserError(f"config key 'views.second' is '{second}' but views.first is null; the composition study "
                        f"applies views.first, then views.second. Set views.first={second} (with views.second="
                        f"{second} or null for {second} alone), or views.second=null for SimCLR's family of views.")


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
    for key, section in cfg.eval.items():  # every classifier stage's SGD
        if isinstance(section, DictConfig) and section.get("nesterov") and section.momentum <= 0:
            raise UserError(f"config key 'eval.{key}.nesterov' is true with eval.{key}.momentum={section.momentum}; "
                            "Nesterov momentum needs a positive momentum (e.g. 0.9).")
    if cfg.eval.nonlinear.hidden_dim < 1:
        raise UserError("config key 'eval.nonlinear.hidden_dim' must be at least 1.")
