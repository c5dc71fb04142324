"""`python -m ssl_runner method=simclr data=cifar10`: the Hydra entry point.

Composes `conf/` and runs one job per composed config (ssl_runner/job.py:
lock, validation, ranks, pipeline). Bad input, Hydra's composition errors
and an unwritable folder included, ends with one paragraph and exit status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from ssl_runner.errors import EXIT_USER_ERROR, UserError
from ssl_runner.safe_io import write_failure, write_failure_paragraph


def config_dir() -> str:
    """`conf/` beside the package (a source checkout or an editable install),
    else the copy installed as `ssl_runner/conf`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"ssl_runner's config tree is missing (looked in {here.parent / 'conf'} and {here / 'conf'})")


def config_groups() -> str:
    """The config groups and their options, for `--help`: the groups of
    `conf/` a user chooses from. A preset's per-method adjustments
    (conf/experiment/<preset>/<method>.yaml) are applied by themselves, so
    they are named once, not listed as groups of their own."""
    root = Path(config_dir())
    lines = []
    for group in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")):
        options = ", ".join(sorted(f.stem for f in group.glob("*.yaml")))
        lines.append(f"{group.name}: {options}")
        adjusted = sorted(d.name for d in group.iterdir() if d.is_dir() and any(d.glob("*.yaml")))
        if adjusted:
            lines.append(f"  (with method adjustments in {group.name}/<preset>/<method>.yaml: {', '.join(adjusted)})")
    return "\n".join(lines)


OmegaConf.register_new_resolver("ssl_runner_config_groups", config_groups)


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
    import lightning.pytorch  # noqa: F401  (its import adds the handlers cleared here)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> Optional[Dict[str, Any]]:
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from ssl_runner.job import run_job
    from ssl_runner.runtime import start_job

    start_job()
    quiet_lightning()
    return run_job(cfg)


def hydra_error_paragraph(err: HydraException) -> str:
    """Hydra's composition errors as one paragraph: a misspelt key is named
    with the closest one (Hydra's advice to add `+` would add the typo)."""
    from ssl_runner.config import RunConfig
    from ssl_runner.validation import unknown_key_message

    text = str(err)
    key = re.search(r"Could not override '([^']+)'", text)
    if key and ("not in struct" in f"{text} {err.__cause__}" or "No match in the defaults list" in text):
        message = unknown_key_message(key.group(1), RunConfig)
    else:
        message = " ".join(text.replace("\n\t", ", ").split())
    return UserError(message).paragraph()


def main() -> None:
    # Hydra's own failures (composition, the run folder) reach us as exceptions,
    # not as its printed report and exit status 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except HydraException as err:
        print(hydra_error_paragraph(err), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:
        disk = write_failure(err)
        if disk is None:
            raise
        print(write_failure_paragraph(disk), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
