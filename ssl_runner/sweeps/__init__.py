"""Sweeps: what a sweep's jobs know of their sweep (`job_info`), the value a
job returns to the sweeper (`objective`), the sweep's results table and
pictures (`results`, `plots`), and the Optuna study behind
`hydra/sweeper=optuna` (`optuna_study`; the Hydra plugin itself is in
`hydra_plugins/ssl_runner_optuna/`, where Hydra looks for plugins)."""
