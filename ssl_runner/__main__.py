"""`python -m ssl_runner method=simclr data=cifar10`: the Hydra entry point.

Composes `conf/`, validates it against the schema, then runs the pipeline in
Hydra's run folder. Bad input ends with one paragraph and exit status 2.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ssl_runner.errors import EXIT_COLLECTIVE_FAILURE, EXIT_USER_ERROR, UserError

log = logging.getLogger("ssl_runner")


def config_dir() -> str:
    """`conf/` beside the package (a source checkout or an editable install),
    else the copy installed as `ssl_runner/conf`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"ssl_runner's config tree is missing (looked in {here.parent / 'conf'} and {here / 'conf'})")


# Lightning's advice that does not apply: in-memory data needs no workers, and
# small smoke runs have fewer batches than the logging interval.
QUIET_WARNINGS = (
    ".*does not have many workers.*",
    ".*smaller than the logging interval.*",
    ".*GPU available but not used.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*predict_dataloader.*shuffle.*",
    ".*defined a `validation_step` but have no `val_dataloader`.*",
    ".*LeafSpec.*deprecated.*",
    ".*Experiment logs directory .* exists and is not empty.*",
)


def quiet_lightning() -> None:
    """Lightning's loggers print through their own handlers and announce
    hardware and tips at INFO for every Trainer; route them through ours and
    keep only its warnings (epochs are logged by our progress callback)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A run that failed validation leaves no folder behind, unless the folder
    holds more than what Hydra wrote for this very call."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "ssl_runner.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        # The default layout's date folder too, if this run was all it held.
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name) and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from ssl_runner import distributed
    from ssl_runner.config import validate
    from ssl_runner.methods import method_schemas
    from ssl_runner.pipeline import run_pipeline
    from ssl_runner.runtime import keep_freed_memory, start_job

    start_job()
    quiet_lightning()
    hydra_dir = run_dir = Path(HydraConfig.get().runtime.output_dir)
    session = None
    try:
        typed = validate(cfg, method_schemas())
        if typed.trainer.keep_freed_memory:
            keep_freed_memory()
        distributed.check_plan(typed)
        session = distributed.start(typed, run_dir)
    except UserError as err:
        print(err.paragraph(), file=sys.stderr)
        _discard_empty_run_dir(run_dir)
        sys.exit(EXIT_USER_ERROR)
    if session is not None and session.run_dir != hydra_dir:
        # torchrun / SLURM: this rank's Hydra made a folder of its own; all use rank 0's.
        _discard_empty_run_dir(hydra_dir)
        run_dir = session.run_dir
    failed = True
    try:
        summary = run_pipeline(typed, run_dir)
        failed = False
    except UserError as err:
        if distributed.is_main_process():
            print(err.paragraph(), file=sys.stderr)
            _discard_empty_run_dir(run_dir)
        else:  # usually the same error as rank 0's, but it may be this rank's alone
            print(f"(rank {distributed.rank()}) {err.paragraph()}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:
        if not distributed.is_collective_failure(err):
            raise
        print(distributed.collective_failure_message(err), file=sys.stderr)
        sys.exit(EXIT_COLLECTIVE_FAILURE)
    finally:
        problem = session.finish(failed) if session is not None else None
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(EXIT_COLLECTIVE_FAILURE)
    if distributed.is_main_process():
        results = {name: stage.get("top1", stage.get("loss")) for name, stage in summary["stages"].items()}
        log.info("run folder %s: %s", run_dir, results)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
