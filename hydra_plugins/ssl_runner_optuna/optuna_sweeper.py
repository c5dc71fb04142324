"""The Hydra Sweeper plugin: `hydra/sweeper=optuna` (registered below, its
settings and defaults in `OptunaSweeperConf`; presets in conf/hparams_search/).
Hydra instantiates it with `hydra.sweeper`'s settings and calls `sweep`.
Optuna is imported only then, so that Hydra's scan of its plugins works
without the `sweeps` extra."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper


@dataclass
class OptunaSettings:
    # The study's total number of trials: a rerun runs only those still missing.
    n_trials: int = 20
    # Trials launched together (one batch of the launcher; >1 with a parallel launcher).
    n_jobs: int = 1
    # tpe | random; the seed of the search (plus the study's size, on resume).
    sampler: str = "tpe"
    seed: int = 0
    # TPE's random trials before it models the objective (Optuna's default).
    n_startup_trials: int = 10
    # The search stops once more than this fraction of n_trials has failed.
    max_failure_rate: float = 0.5
    # null/sqlite: <sweep dir>/optuna.db; journal[:PATH]: a journal file for a
    # cluster's shared file system; else an SQLAlchemy URL.
    storage: Optional[str] = None
    # null: the sweep folder's name (below outputs/).
    study_name: Optional[str] = None
    # key -> Hydra sweep syntax: interval(a,b), tag(log,interval(a,b)), choice(a,b), range(a,b).
    params: Dict[str, str] = field(default_factory=dict)


@dataclass
class OptunaSweeperConf(OptunaSettings):
    _target_: str = "hydra_plugins.ssl_runner_optuna.optuna_sweeper.OptunaSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ssl_runner")


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = OptunaSettings(**settings)
        self.config: Any = None
        self.launcher: Any = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        from ssl_runner.sweeps.optuna_study import run_study

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        return run_study(self.settings, self.config, self.launcher, parser, arguments, self.validate_batch_is_legal)
