"""ssl-runner's Optuna sweeper for Hydra (`hydra/sweeper=optuna`). Hydra finds
plugins only in the `hydra_plugins` namespace package, hence this folder;
the search itself is ssl_runner/sweeps/optuna_study.py."""
