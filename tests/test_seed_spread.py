"""Seeds pooled: the runs of one recipe as mean ± sample std with n, in the
results table script's output and a sweep's results.md."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssl_runner.seed_spread import has_repeated_seeds, mean_std, pooled_table

REPO = Path(__file__).resolve().parent.parent


def _summary(seed, knn, linear, lr="0.3", status="done", job=0):
    return {"status": status, "method": "simclr", "backbone": "resnet_tiny", "image_size": 32, "feature_layer": None,
            "train_images": 2000, "epochs": 2, "batch_size": 128, "hardware": {"accelerator": "cpu", "cpu_threads": 2},
            "seed": seed, "run": f"{job}_simclr", "overrides": [f"optimizer.lr={lr}", f"seed={seed}"],
            "objective": {"key": "stages.linear.top1", "direction": "maximize",
                          "value": linear if status == "done" else None},
            "sweep": {"name": "s", "folder": "s", "job": job, "overrides": []},
            "stages": {"knn": {"top1": knn}, "linear": {"top1": linear}} if status == "done" else {},
            "baseline": {"knn_random_init": {"top1": 20.0}} if status == "done" else {},
            **({"error": "diverged", "exit_code": 4} if status != "done" else {})}


def _rows(table: str):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_mean_and_sample_std_of_a_recipe_with_n_and_failed_runs_counted():
    assert mean_std([30.0]) == "30.00"
    assert mean_std([30.0, 32.0, 34.0]) == "32.00 ± 2.00"  # sample std: sqrt(8 / 2)
    runs = [_summary(0, 30.0, 40.0), _summary(1, 32.0, 41.0), _summary(2, 34.0, 45.0),
            _summary(3, 0, 0, status="diverged"), _summary(0, 50.0, 60.0, lr="0.1")]
    assert has_repeated_seeds(runs) and not has_repeated_seeds([runs[0], runs[4]])
    header, *_ = pooled_table(runs).splitlines()
    rows = {row[header.strip("| ").split(" | ").index("overrides")]: dict(zip(header.strip("| ").split(" | "), row))
            for row in _rows(pooled_table(runs))}
    three = rows["optimizer.lr=0.3"]
    assert (three["n"], three["seeds"]) == ("3 of 4 (1 failed)", "0, 1, 2")
    assert (three["kNN top-1"], three["linear top-1"]) == ("32.00 ± 2.00", "42.00 ± 2.65")
    assert three["kNN gain"] == "12.00 ± 2.00" and three["random-init kNN"] == "20.00 ± 0.00"
    one = rows["optimizer.lr=0.1"]
    assert (one["n"], one["seeds"], one["kNN top-1"]) == ("1", "0", "50.00")


def _script(monkeypatch, capsys, *args) -> str:
    """scripts/results_table.py ARGS, in this process (no second torch import)."""
    monkeypatch.setattr(sys, "argv", ["results_table.py", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "scripts" / "results_table.py"), run_name="__main__")
    assert stop.value.code == 0
    return capsys.readouterr().out


def test_the_script_and_a_sweeps_results_md_add_the_pooled_table_only_for_repeated_seeds(tmp_path, monkeypatch,
                                                                                          capsys):
    from ssl_runner.sweeps.results import SweepResultsTable

    for job, (seed, knn, linear) in enumerate([(0, 30.0, 40.0), (1, 32.0, 41.0), (2, 34.0, 45.0)]):
        folder = tmp_path / "sweep" / f"{job}_simclr"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(_summary(seed, knn, linear, job=job)))
    script = _script(monkeypatch, capsys, tmp_path / "sweep")
    assert "Seeds pooled" in script and "| 3 | 0, 1, 2 | 32.00 ± 2.00 |" in script
    SweepResultsTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    results = (tmp_path / "sweep" / "results.md").read_text()
    assert "Seeds pooled" in results and "42.00 ± 2.65" in results
    single = _script(monkeypatch, capsys, tmp_path / "sweep" / "0_simclr")
    assert "Seeds pooled" not in single


def test_two_runs_of_one_seed_are_still_pooled_as_two_runs():
    runs = [_summary(0, 30.0 + i, 40.0, job=i) for i in range(2)]
    assert has_repeated_seeds(runs)
    assert "| 2 | 0, 0 | 30.50 ± 0.71 |" in pooled_table(runs)
