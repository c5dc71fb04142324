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
from typing import List, Optional

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from ssl_runner import cli_help
from ssl_runner.conf_root import config_dir
from ssl_runner.errors import EXIT_USER_ERROR, UserError
from ssl_runner.safe_io import write_failure, write_failure_paragraph


def config_groups() -> str:
    """The config groups a user chooses from, with their options, for
    `--help` (ssl_runner/cli_help.py: not Hydra's groups, nor a preset's
    per-method adjustments, which apply by themselves)."""
    return cli_help.config_groups_text(Path(config_dir()))


# --help's text, built from the facts it describes (conf/config.yaml's hydra.help.template).
OmegaConf.register_new_resolver("ssl_runner_config_groups", config_groups)
OmegaConf.register_new_resolver("ssl_runner_help", lambda: cli_help.help_overview(Path(config_dir())))


def register_optuna_sweeper() -> None:
    """`hydra/sweeper=optuna`: our sweeper (hydra_plugins/ssl_runner_optuna),
    registered by hand: Hydra's own scan of `hydra_plugins` does not see the
    folders of an editable install (setuptools' import hook lists no modules)."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.ssl_runner_optuna.optuna_sweeper import OptunaSweeper

    Plugins.instance().register(OptunaSweeper)


register_optuna_sweeper()


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
    # A mid-epoch checkpoint resumes exactly: the training loaders' sampler skips
    # the batches it holds (data/loaders.py EpochShuffle.resume_within_epoch).
    ".*resuming from a checkpoint that ended before the epoch ended.*",
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
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from ssl_runner.job import objective_value, run_job
    from ssl_runner.runtime import start_job

    start_job()
    quiet_lightning()
    # The sweeper's number (Optuna's objective): the config's objective.key in
    # summary.json, None for a failed job (ssl_runner/sweeps/objective.py).
    return objective_value(run_job(cfg))


def hydra_error_paragraph(err: HydraException) -> str:
    """Hydra's composition errors as one paragraph: a misspelt key is named
    with the closest one (Hydra's advice to add `+` would add the typo)."""
    from ssl_runner.config import RunConfig
    from ssl_runner.validation import unknown_key_message

    text = str(err)
    key = re.search(r"Could not override '([^']+)'", text)
    if key and key.group(1).startswith("hydra.sweeper."):
        return UserError(sweeper_key_message(key.group(1))).paragraph()
    if key and ("not in struct" in f"{text} {err.__cause__}" or "No match in the defaults list" in text):
        message = unknown_key_message(key.group(1), RunConfig)
    else:
        message = " ".join(text.replace("\n\t", ", ").split())
    return UserError(message).paragraph()


def sweeper_key_message(key: str) -> str:
    """A misspelt setting of the Optuna sweeper, with the closest one (Hydra
    would advise `+key`, which adds the typo)."""
    import difflib

    from hydra_plugins.ssl_runner_optuna.optuna_sweeper import OptunaSettings

    name = key.removeprefix("hydra.sweeper.")
    known = list(OptunaSettings.__dataclass_fields__)
    close = difflib.get_close_matches(name.split(".")[0], known, n=1)
    return (f"'{key}' is not a setting of the sweeper" + (f"; did you mean hydra.sweeper.{close[0]}?" if close else ".")
            + f" The Optuna sweeper's settings (hydra/sweeper=optuna): {', '.join(known)}; the grid sweeper's: "
            "params, max_batch_size.")


# The preset a machine without a GPU runs when the command names none.
CPU_PRESET = "cifar10_cpu"


def has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def choose_cpu_preset(args: List[str]) -> List[str]:
    """The command line to run: on a machine without a GPU, a command that
    names no experiment (and no checkpoint to evaluate) gets
    experiment=cifar10_cpu, and says so: the default config is the 100-epoch
    ResNet-18 recipe, about a day on 2 CPU cores. `experiment=none` asks for
    it anyway."""
    named = any(re.match(r"^\+{0,2}(experiment|checkpoint)=", a) for a in args)
    if named or any(a in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--version") or a.startswith("--info")
                    for a in args) or has_accelerator():
        return args
    print(f"ssl-runner: no GPU here, so this runs the CPU preset experiment={CPU_PRESET} (resnet_tiny, 4 epochs on "
          "all 50,000 CIFAR-10 images, kNN + linear probe: about 7 minutes on 2 cores). The full recipe is "
          "experiment=<method>_cifar10 on a GPU; add experiment=none to run the default config (ResNet-18, 100 "
          "epochs) on this CPU anyway, about a day.", file=sys.stderr)
    return [*args, f"experiment={CPU_PRESET}"]


def expand_seeds(args: List[str]) -> List[str]:
    """`seeds=[0,1,2]`: the recipe once per seed, as the multirun `seed=0,1,2`
    (each seed its own run folder; the sweep's results.md pools them: mean ±
    std with n). With other swept keys (`-m optimizer.lr=0.1,1`), every point
    runs each seed. A command-line option, not a config key."""
    given = [a for a in args if re.match(r"^\+{0,2}seeds=", a)]
    if not given:
        return args
    fix = "Give the seeds once, as seeds=[0,1,2] (or a multirun over seed: -m seed=0,1,2)."
    if len(given) > 1 or any(re.match(r"^\+{0,2}seed=", a) for a in args):
        raise UserError(f"the command gives the seeds more than once ({', '.join(a for a in args if 'seed' in a)}). "
                        + fix)
    if any(re.match(r"^\+{0,2}hparams_search=", a) for a in args):
        raise UserError("seeds=[...] with hparams_search: an Optuna trial runs one seed, and the search would see "
                        "each seed as a separate trial. Remove seeds=..., or sweep the seeds by hand once the search "
                        "has chosen its values.")
    text = given[0].split("=", 1)[1].strip().removeprefix("[").removesuffix("]")
    seeds = [s.strip() for s in text.split(",") if s.strip()]
    if not seeds or not all(re.fullmatch(r"\d+", s) for s in seeds) or len(set(seeds)) < len(seeds):
        raise UserError(f"seeds={given[0].split('=', 1)[1]} is not a list of distinct non-negative integers. " + fix)
    rest = [a for a in args if a != given[0]]
    multirun = any(a in ("-m", "--multirun") for a in rest)
    # Hydra's parser takes its flags before the overrides.
    return [*([] if multirun else ["--multirun"]), *rest, f"seed={','.join(seeds)}"]


def main() -> None:
    # Hydra's own failures (composition, the run folder) reach us as exceptions,
    # not as its printed report and exit status 1.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        sys.argv[1:] = expand_seeds(choose_cpu_preset(sys.argv[1:]))
        _hydra_main()
    except HydraException as err:
        print(hydra_error_paragraph(err), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except UserError as err:  # a sweeper's own settings (hydra_plugins/ssl_runner_optuna)
        print(err.paragraph(), file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        disk = write_failure(err)
        if disk is None:
            raise
        print(write_failure_paragraph(disk), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
