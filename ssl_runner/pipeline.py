"""The pipeline: which stages run, in which order, and the loop that runs them.

The stages themselves are in `ssl_runner/stages/` (one module per stage or
family, each a registered record). Each stage has its own subfolder and its
own Trainer. Stages hand over through the run's manifest: pretraining records
the encoder it exported, and kNN, linear and fine-tuning load that file
strictly (or `checkpoint=PATH` when the pipeline has no pretraining).
Rerunning a command in the same run folder skips finished stages and resumes
an interrupted one from its `last.ckpt`.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ssl_runner import progress
from ssl_runner.config import to_plain
from ssl_runner.distributed import collectives
from ssl_runner.distributed.batch import batch_sizes
from ssl_runner.encoder import adopt_checkpoint_architecture
from ssl_runner.methods import METHODS
from ssl_runner.run_dir import SUMMARY, Manifest, hardware_description, relative_paths, summarise
from ssl_runner.runtime import job_age
from ssl_runner.safe_io import write_json, write_text
from ssl_runner.protocols import protocol_label, with_protocol
from ssl_runner.stages import STAGES, random_init_names
from ssl_runner.stages.context import RunContext
from ssl_runner.stages.registry import DATA_READS, ENCODER, TRAIN_SPLIT, evaluation_stages
from ssl_runner.checkpoints import prepare_stage_folder
from ssl_runner.stopping import raise_if_stop_requested
from ssl_runner.wandb_logging import log_pipeline_summary
from ssl_runner.sweeps.job_info import sweep_job, task_overrides
from ssl_runner.sweeps.objective import objective_record, resolve_key

log = logging.getLogger(__name__)


# ---- the pipeline ----------------------------------------------------------------------

def run_facts(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """The facts every reported figure needs: method, data, backbone, epochs,
    batch size, hardware, seed."""
    batch = batch_sizes(cfg, collectives.world_size())
    return {
        "method": cfg.method.name,
        "data": cfg.data.name,
        "backbone": cfg.backbone.name,
        "seed": cfg.seed,
        # The folder's name, not its path: every path in summary.json is
        # relative to the run folder, so the folder can move.
        "run": run_dir.name,
        "train_images": cfg.data.subset,
        "test_images": cfg.data.test_subset,
        "epochs": cfg.trainer.max_epochs,
        "batch_size": batch.per_device,
        # The input side of training and evaluation, and the backbone stage the
        # evaluation stages read (null: the representation h).
        "image_size": cfg.data.image_size,
        "feature_layer": cfg.eval.feature_layer,
        "global_batch_size": batch.global_batch,
        "processes": collectives.world_size(),
        "nodes": cfg.trainer.num_nodes,
        "hardware": hardware_description(cfg.trainer.accelerator),
        # The command line's overrides (a sweep's table has a column per swept key)
        # and, in a multirun, the sweep this job belongs to.
        "overrides": task_overrides(),
        **({"sweep": job.as_dict()} if (job := sweep_job()) is not None else {}),
    }


def planned_stages(cfg: DictConfig) -> List[str]:
    """pipeline.stages, with the method's extra evaluation stages after
    `linear` and, with eval.random_baseline, the random-init twins after
    them: the always-run ones first (the kNN floor), then the twin of each
    planned stage that has one, in the stages' order."""
    stages = list(cfg.pipeline.stages)
    if "linear" in stages:
        extra = METHODS[cfg.method.name][0].extra_eval_stages
        stages[stages.index("linear") + 1:stages.index("linear") + 1] = [s for s in extra if s not in stages]
    if cfg.eval.random_baseline:
        records = [STAGES[s] for s in stages]
        always = [s.random_init.name for s in STAGES.values() if s.random_init and s.twin_always]
        stages += always + [s.random_init.name for s in records if s.random_init and s.random_init.name not in always]
    return stages


def image_counts(ctx: RunContext, stages: List[str], facts: Dict[str, Any]) -> None:
    """The images actually used (after subsets, as decoded), into `facts`; a
    split no stage reads stays as configured."""
    if "train_images" in ctx.__dict__ or any(TRAIN_SPLIT in STAGES[s].reads for s in stages):
        facts["train_images"] = len(ctx.train_images)
    if "test_images" in ctx.__dict__:
        facts["test_images"] = len(ctx.test_images)


def announce(cfg: DictConfig, facts: Dict[str, Any], stages: List[str], run_dir: Path,
             resume_command: Optional[str]) -> None:
    """The start banner, and the plan the progress lines' run ETA reads. (Two
    views per image: the estimate's ratio between pretraining and the later
    stages; the current stage's own rate is measured.)"""
    work = {s: progress.stage_work(cfg, s, facts["train_images"] or 0, facts["test_images"] or 0, 2) for s in stages}
    progress.set_plan(progress.RunPlan(stages, work))
    if collectives.is_main_process():
        for line in progress.banner_lines(cfg, facts, stages, str(run_dir), resume_command):
            log.info("%s", line)


def run_pipeline(cfg: DictConfig, run_dir: Path, callbacks: Optional[List[Callback]] = None,
                 on_accepted: Optional[Callable[[], None]] = None,
                 resume_command: Optional[str] = None) -> Dict[str, Any]:
    """Run the configured stages in `run_dir`; returns the summary it writes.
    `on_accepted` is called on the main process once the folder has accepted
    this config (the CLI records Hydra's files then, never before a refusal).
    `resume_command` is the command line that resumes this run (the banner
    shows it)."""
    main = collectives.is_main_process()
    if collectives.world_size() > 1 and not collectives.is_initialized():
        raise RuntimeError("a multi-process config needs its process group; start runs through "
                           "python -m ssl_runner, torchrun or SLURM")
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = planned_stages(cfg)
    if not any(ENCODER in STAGES[s].provides for s in stages) and cfg.checkpoint:
        # Evaluate the encoder as it was trained, whatever backbone the config names.
        adopt_checkpoint_architecture(cfg)
    # Every rank reads the manifest before rank 0 writes to it (only rank 0
    # writes: the others keep their copy in step without saving it).
    manifest = Manifest.open(run_dir, to_plain(cfg), writable=main)
    collectives.barrier()
    ctx = RunContext(cfg, run_dir, manifest, list(callbacks or []))
    if not all(manifest.is_done(s) for s in stages):
        # Missing or unreadable data fails here, before any stage is recorded.
        ctx.train_images  # noqa: B018
        for kind, decoded in DATA_READS.items():
            if any(kind in STAGES[s].reads for s in stages if not manifest.is_done(s)):
                getattr(ctx, decoded)
    if main:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if on_accepted is not None:
            on_accepted()
    facts = run_facts(cfg, run_dir)
    image_counts(ctx, stages, facts)
    announce(cfg, facts, stages, run_dir, resume_command)
    build_summary = partial(summarise, stages=stages, baselines=random_init_names())
    objective_key = resolve_key(cfg.objective.key, evaluation_stages(stages))

    def write_summary() -> Dict[str, Any]:
        # Wall clock of this run so far, start-up included, summed over its
        # attempts (a multirun job counts from its own start).
        wall = manifest.wall_seconds(job_age())
        summary = relative_paths({**build_summary(manifest, facts), "wall_seconds": wall,
                                  "attempts": len(manifest.data["attempt_seconds"])}, run_dir)
        summary["objective"] = objective_record(summary, objective_key, cfg.objective.direction)
        if main:
            write_json(run_dir / SUMMARY, summary)
        return summary

    for stage in stages:
        if manifest.is_done(stage):
            log.info("%s: already done in %s, skipped", stage, run_dir)
            continue
        if main:
            prepare_stage_folder(run_dir, stage)
        collectives.barrier()
        L.seed_everything(cfg.seed, verbose=False)
        plan = progress.PLAN
        if plan is not None:
            plan.enter(stage)
        log.info("%s: starting (%s)", stage, plan.label() if plan is not None else stage)
        manifest.wall_seconds(job_age())  # the attempt on record before its stage, in case it is killed outright
        manifest.start(stage)
        try:
            raise_if_stop_requested(f"before {stage}")
            result = STAGES[stage].run(ctx)
        except BaseException as err:
            manifest.fail(stage, err)
            try:
                write_summary()
            except OSError as write_err:  # a full disk: the stage's own error is the one to report
                log.warning("could not write %s (%s)", run_dir / SUMMARY, write_err)
            raise
        result = with_protocol(stage, cfg, result)
        manifest.finish(stage, result)
        figures = {k: v for k, v in result.items() if k in ("top1", "loss", "epochs")}
        log.info("%s: done %s%s", stage, figures,
                 f", protocol {protocol_label(result['protocol'])}" if "protocol" in result else "")
        write_summary()
    summary = write_summary()
    if main and cfg.logger.name == "wandb":
        # The pipeline's W&B summary run: its figures, encoder and pictures in one place.
        log_pipeline_summary(cfg, run_dir, summary, manifest)
    return summary
