"""Weights & Biases (logger=wandb): one W&B run per stage while it runs, and
one summary run per pipeline at its end, laid out for a sweep's dashboard.

- group: the pipeline (its run folder), so a pipeline's stage runs and its
  summary run sit together; job type: the stage ("summary" for the last run);
- tags: `logger.tags` and, in a Hydra multirun, the sweep's name, so that
  one filter shows every job of a sweep;
- config: the resolved config, plus in a multirun the sweep (`sweep.name`,
  `sweep.job`, `sweep.overrides`) and the job's overrides as values
  (`override.<key>`), the columns a sweep differs in;
- metric names carry the stage (`wandb_metric_name`): `linear/top1` and
  `linear_random_init/top1`, `pretrain/train/loss_epoch`, never two stages'
  `test/top1` in one panel. Only W&B's names: the CSV files keep Lightning's;
- the summary run: every stage's top-1 and loss (`knn/top1`, `linear/top1`,
  `knn_random_init/top1`, ...) and the objective in its summary, the encoder
  as a "model" artifact and the run folder's pictures as images: one row per
  pipeline, the table in which a sweep's pipelines are compared.

Offline (`WANDB_MODE=offline` or `logger.mode=offline`) everything lands in
`<run>/wandb/offline-run-*`, for `wandb sync`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from ssl_runner.config import to_plain
from ssl_runner.sweeps.job_info import SweepJob, sweep_job

if TYPE_CHECKING:
    from ssl_runner.run_dir import Manifest

log = logging.getLogger(__name__)

SUMMARY_JOB_TYPE = "summary"
# Figures of each stage's summary.json record that the summary run shows.
SUMMARY_FIGURES = ("top1", "top5", "loss")
# W&B refuses longer tags.
MAX_TAG_LENGTH = 64
# Lightning's step counters, the x axes every stage shares: not renamed.
AXES = ("epoch", "trainer/global_step")


def wandb_metric_name(stage: str, key: str) -> str:
    """The W&B name of a metric a stage logs: `<stage>/<metric>`. The test
    split's figures are the stage's results (`test/top1` -> `linear/top1`);
    the others keep their split (`train/loss` -> `linear/train/loss`); a key
    already under the stage (kNN's `knn/top1`) and the step axes stay."""
    if key in AXES or key.startswith(f"{stage}/"):
        return key
    if key.startswith("test/"):
        return f"{stage}/{key.removeprefix('test/')}"
    return f"{stage}/{key}"


def pipeline_group(run_dir: Path, sweep: Optional[SweepJob]) -> str:
    """The W&B group of one pipeline: its run folder (in a multirun, the sweep's
    name and the job's folder, so that jobs of different sweeps never share one)."""
    if sweep is not None:
        return f"{sweep.name}/{run_dir.name}"
    return f"{run_dir.parent.name}_{run_dir.name}"


def run_tags(cfg: DictConfig, sweep: Optional[SweepJob]) -> List[str]:
    tags = [str(t) for t in cfg.logger.tags]
    if sweep is not None:
        # The sweep's name ends in what tells sweeps apart (its date and time).
        tags.append(sweep.name[-MAX_TAG_LENGTH:])
    return list(dict.fromkeys(tags))


def override_values(overrides: Sequence[str]) -> Dict[str, Any]:
    """`["optimizer.lr=0.1", "+x=a"]` -> `{"optimizer.lr": 0.1, "x": "a"}`,
    parsed as Hydra parses them (numbers stay numbers, so W&B sorts and plots
    them); deletions (`~key`) name no value and are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    values: Dict[str, Any] = {}
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception:  # not Hydra's grammar: keep the text
            key, _, value = text.lstrip("+~").partition("=")
            values[key] = value
            continue
        if not override.is_delete():
            values[override.key_or_group] = override.value()
    return values


def run_config(cfg: DictConfig, sweep: Optional[SweepJob]) -> Dict[str, Any]:
    config = to_plain(cfg)
    if sweep is not None:
        config["sweep"] = sweep.as_dict()
        config["override"] = override_values(sweep.overrides)
    return config


def _init_kwargs(cfg: DictConfig, run_dir: Path, job_type: str) -> Dict[str, Any]:
    """What every W&B run of this pipeline is started with (`wandb.init`'s arguments)."""
    sweep = sweep_job()
    group = pipeline_group(run_dir, sweep)
    kwargs: Dict[str, Any] = dict(project=cfg.logger.project, entity=cfg.logger.entity, group=group,
                                  job_type=job_type, name=f"{group}-{job_type}", dir=str(run_dir),
                                  tags=run_tags(cfg, sweep), config=run_config(cfg, sweep))
    if cfg.logger.mode is not None:  # else WANDB_MODE decides
        kwargs["mode"] = cfg.logger.mode
    return kwargs


class StageWandbLogger(WandbLogger):
    """Lightning's W&B logger with the stage in every metric's name
    (`wandb_metric_name`): each stage is a run of its own, but W&B's
    workspace and tables merge equal names across runs."""

    def __init__(self, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        super().log_metrics({wandb_metric_name(self.stage, k): v for k, v in metrics.items()}, step)


def stage_logger(cfg: DictConfig, run_dir: Path, stage: str) -> StageWandbLogger:
    kwargs = _init_kwargs(cfg, run_dir, stage)
    return StageWandbLogger(stage, save_dir=kwargs.pop("dir"), **kwargs)


def finish_stage_runs(loggers: Sequence[Logger]) -> None:
    """Close the stage's W&B run so that the next stage starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        wandb.finish()


# ---- the summary run ---------------------------------------------------------------------

def summary_figures(summary: Mapping[str, Any]) -> Dict[str, Any]:
    """The summary run's figures: `<stage>/top1` (top5, loss) of every stage and
    baseline in summary.json, the objective (value, key, direction) when the
    summary has one, the status and the wall time."""
    figures: Dict[str, Any] = {"status": summary.get("status"), "wall_seconds": summary.get("wall_seconds")}
    for section in ("stages", "baseline"):
        for stage, record in summary.get(section, {}).items():
            for key in SUMMARY_FIGURES:
                value = record.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    figures[f"{stage}/{key}"] = value
            # The transfer stage's figures, by target: transfer/<target>/knn_top1, .../linear_top1.
            for target, result in (record.get("targets") or {}).items():
                for key, value in result.items():
                    if key.endswith("top1") and isinstance(value, (int, float)) and not isinstance(value, bool):
                        figures[f"{stage}/{target}/{key}"] = value
    objective = summary.get("objective")
    if isinstance(objective, Mapping):
        figures["objective"] = objective.get("value")
        figures["objective/key"] = objective.get("key")
        figures["objective/direction"] = objective.get("direction")
    return {k: v for k, v in figures.items() if v is not None}


def run_images(run_dir: Path, summary: Mapping[str, Any]) -> Dict[str, Path]:
    """Every picture of the run folder (the stages' `plots` in summary.json and
    any other PNG in a stage folder: the pretext tasks' image grids), keyed
    `images/<stage>/<name>`."""
    listed = [run_dir / rel for section in ("stages", "baseline")
              for record in summary.get(section, {}).values() for rel in record.get("plots", [])]
    found = [p for p in run_dir.glob("*/*.png") if p.parent.name != "wandb"]
    images: Dict[str, Path] = {}
    for path in sorted({*listed, *found}):
        if path.is_file():
            images["images/" + path.relative_to(run_dir).with_suffix("").as_posix()] = path
    return images


def summary_run_id(run_dir: Path, manifest: "Manifest") -> str:
    """The same id for every attempt of one pipeline (its folder and the
    manifest's creation time), so a rerun updates its summary run instead of
    adding a second row to the sweep's table."""
    key = f"{run_dir.resolve()}|{manifest.data.get('created', '')}"
    return "summary-" + hashlib.sha1(key.encode()).hexdigest()[:16]


def _log_encoder(run: Any, encoder: Path, group: str, figures: Dict[str, Any], cfg: DictConfig) -> None:
    import wandb

    name = "encoder-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", group)
    metadata = {"method": cfg.method.name, "backbone": cfg.backbone.name, "data": cfg.data.name,
                **{k: v for k, v in figures.items() if k.endswith("/top1")}}
    artifact = wandb.Artifact(name[:128], type="model", metadata=metadata)
    # "immutable": a finished run's encoder does not change, so W&B need not
    # copy it to its staging folder (a second copy of every encoder).
    artifact.add_file(str(encoder), name=encoder.name, policy="immutable")
    run.log_artifact(artifact)


def log_pipeline_summary(cfg: DictConfig, run_dir: Path, summary: Mapping[str, Any], manifest: "Manifest") -> None:
    """The pipeline's summary run (main process, after summary.json is
    written). W&B mirrors what the run folder already holds: a failure here
    is a warning, never a lost run."""
    import wandb

    kwargs = _init_kwargs(cfg, run_dir, SUMMARY_JOB_TYPE)
    figures = summary_figures(summary)
    try:
        run = wandb.init(id=summary_run_id(run_dir, manifest), resume="allow", **kwargs)
        try:
            run.summary.update(figures)
            images = {}
            for key, path in run_images(run_dir, summary).items():
                try:
                    images[key] = wandb.Image(str(path))
                except Exception as err:  # a picture that cannot be read is not worth the others
                    log.warning("W&B: %s not logged (%s)", path, err)
            if images:
                run.log(images)
            encoder = manifest.encoder_path()
            if encoder is not None and encoder.is_file():
                _log_encoder(run, encoder, kwargs["group"], figures, cfg)
        finally:
            run.finish()
    except Exception as err:
        log.warning("W&B: the pipeline's summary run was not logged (%s: %s)", type(err).__name__, err)
