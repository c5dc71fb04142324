"""The sweep's results (ssl_runner/sweeps/results.py): results.md and
results.csv with a column per swept key, sorted by the objective, failed jobs
with their reason, and the pictures (a heatmap for a two-key grid), all from
summary.json files written here as a sweep's jobs would leave them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from ssl_runner.sweeps.plots import grid, value_order
from ssl_runner.sweeps.results import SweepResultsTable, load_sweep, parse_override

OBJECTIVE_KEY = "stages.linear.top1"


def _job(sweep: Path, number: int, overrides: list, linear: float | None, direction: str | None = "maximize",
         **facts) -> None:
    run = f"{number}_simclr"
    objective = {"key": OBJECTIVE_KEY, "direction": direction, "value": linear}
    stages = {"knn": {"top1": None if linear is None else linear - 5}, "linear": {"top1": linear}}
    summary = {"method": "simclr", "backbone": "resnet_tiny", "run": run, "status": "done",
               "wall_seconds": 100.25 + number, "overrides": overrides, "objective": objective,
               "sweep": {"name": "sweep", "folder": str(sweep), "job": number, "overrides": overrides},
               "stages": stages, "baseline": {"knn_random_init": {"top1": 12.5}}, **facts}
    (sweep / run).mkdir(parents=True)
    (sweep / run / "summary.json").write_text(json.dumps(summary))


def _grid_sweep(sweep: Path, direction: str | None = "maximize") -> None:
    """Hydra's grid order over lr x temperature; job 2 failed. `experiment` and
    `+eval.tag` are the same in every job: no column."""
    for number, (lr, temperature, linear) in enumerate([("0.1", "0.5", 60.0), ("0.1", "0.2", 70.0),
                                                        ("0.3", "0.5", None), ("0.3", "0.2", 65.5)]):
        facts = {"status": "failed", "error": "optimizer.lr=0.3 is  too large\nfor this batch",
                 "exit_code": 2} if linear is None else {}
        _job(sweep, number, ["experiment=smoke", f"optimizer.lr={lr}", f"method.temperature={temperature}",
                             "+eval.tag=x"], linear, direction, **facts)


def _run_callback(sweep: Path, **config) -> int:
    """on_multirun_end as Hydra calls it; the exit status it asks for (0: none)."""
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, **config.pop("hydra", {})}, **config})
    try:
        SweepResultsTable().on_multirun_end(config=cfg)
    except SystemExit as stop:
        return stop.code
    return 0


def _csv(sweep: Path) -> list:
    with open(sweep / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _markdown(sweep: Path) -> list:
    lines = (sweep / "results.md").read_text().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[4:]]


def _valid_png(path: Path) -> tuple:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


def test_a_grid_sweep_lists_its_swept_keys_sorted_by_the_objective_with_a_heatmap(tmp_path, capsys):
    _grid_sweep(tmp_path)
    assert _run_callback(tmp_path) == 2  # the failed job's exit status
    err = capsys.readouterr().err
    assert "1 of 4 jobs did not finish: 2_simclr failed: optimizer.lr=0.3 is too large for this batch" in err

    rows = _csv(tmp_path)
    assert list(rows[0]) == ["method", "backbone", "optimizer.lr", "method.temperature", "objective", "kNN top-1",
                             "random-init kNN", "linear top-1", "status", "wall s", "run"]
    assert [r["run"] for r in rows] == ["1_simclr", "3_simclr", "0_simclr", "2_simclr"]
    assert [(r["optimizer.lr"], r["method.temperature"]) for r in rows] == [
        ("0.1", "0.2"), ("0.3", "0.2"), ("0.1", "0.5"), ("0.3", "0.5")]
    assert [r["objective"] for r in rows] == ["70.0", "65.5", "60.0", ""]
    assert [r["kNN top-1"] for r in rows] == ["65.0", "60.5", "55.0", ""]
    assert rows[0]["wall s"] == "101.25" and rows[0]["random-init kNN"] == "12.5"
    assert [r["status"] for r in rows[:3]] == ["done"] * 3
    assert rows[3]["status"] == "failed: optimizer.lr=0.3 is too large for this batch"

    table = _markdown(tmp_path)
    assert [r["run"] for r in table] == [r["run"] for r in rows]
    assert [r["optimizer.lr"] for r in table] == [r["optimizer.lr"] for r in rows]
    assert [r["objective"] for r in table] == ["70", "65.5", "60", "–"]
    assert table[3]["status"].startswith("failed: optimizer.lr=0.3") and table[0]["wall s"] == "101"
    assert f"`{OBJECTIVE_KEY}` (maximize), best first" in (tmp_path / "results.md").read_text()

    width, height = _valid_png(tmp_path / "heatmap.png")
    assert width > 300 and height > 200
    _valid_png(tmp_path / "objective.png")
    rows_values, column_values, matrix = grid(load_sweep(tmp_path, OmegaConf.create({})).points())
    assert (rows_values, column_values, matrix.shape) == (["0.1", "0.3"], ["0.2", "0.5"], (2, 2))
    assert matrix[0].tolist() == [70.0, 60.0] and matrix[1, 0] == 65.5 and math.isnan(matrix[1, 1])


def test_minimize_ranks_the_smallest_first_and_failed_jobs_stay_last(tmp_path):
    _grid_sweep(tmp_path, direction="minimize")
    assert _run_callback(tmp_path) == 2
    assert [r["run"] for r in _csv(tmp_path)] == ["0_simclr", "3_simclr", "1_simclr", "2_simclr"]


def test_without_a_recorded_direction_the_master_configs_is_used(tmp_path):
    _grid_sweep(tmp_path, direction=None)
    assert _run_callback(tmp_path, objective={"direction": "minimize"}) == 2
    assert [r["run"] for r in _csv(tmp_path)][0] == "0_simclr"


def test_an_optuna_sweep_over_one_key_has_no_heatmap(tmp_path):
    for number, (lr, linear) in enumerate([("0.001", 55.0), ("0.1", 61.0), ("0.01", 58.25)]):
        _job(tmp_path, number, [f"optimizer.lr={lr}", "optimizer.weight_decay=1e-4"], linear)
    (tmp_path / "heatmap.png").write_bytes(b"an earlier sweep's")
    params = {"optimizer.lr": "tag(log, interval(0.001, 0.1))"}
    assert _run_callback(tmp_path, hydra={"sweeper": {"params": params}}) == 0
    rows = _csv(tmp_path)
    assert [(r["run"], r["optimizer.lr"]) for r in rows] == [("1_simclr", "0.1"), ("2_simclr", "0.01"),
                                                             ("0_simclr", "0.001")]
    assert "optimizer.weight_decay" not in rows[0]  # the same in every trial
    assert not (tmp_path / "heatmap.png").exists()  # the earlier sweep's is gone
    _valid_png(tmp_path / "objective.png")


def test_a_one_job_sweep_shows_the_keys_its_sweeper_declares(tmp_path):
    _job(tmp_path, 0, ["optimizer.lr=0.1", "seed=0"], 61.0)
    params = {"+optimizer.lr": "0.1", "trainer.precision": "32"}
    assert _run_callback(tmp_path, hydra={"sweeper": {"params": params}}) == 0
    rows = _csv(tmp_path)
    assert (rows[0]["optimizer.lr"], rows[0]["trainer.precision"]) == ("0.1", "")  # not among its overrides
    assert "seed" not in rows[0] and _markdown(tmp_path)[0]["trainer.precision"] == "–"


def test_old_summaries_without_objective_or_overrides_are_listed_in_job_order(tmp_path):
    for number in (10, 2):
        _job(tmp_path, number, [], 50.0 + number)
        path = tmp_path / f"{number}_simclr" / "summary.json"
        summary = json.loads(path.read_text())
        for fact in ("objective", "overrides", "sweep"):
            del summary[fact]
        path.write_text(json.dumps(summary))
    assert _run_callback(tmp_path) == 0
    rows = _csv(tmp_path)
    assert [r["run"] for r in rows] == ["2_simclr", "10_simclr"] and "objective" not in rows[0]
    assert not (tmp_path / "objective.png").exists()


@pytest.mark.parametrize("text, parsed", [("a.b=1", ("a.b", "1")), ("+a.b=x=y", ("a.b", "x=y")),
                                          ("++a=2", ("a", "2")), ("~a.b", ("a.b", "~"))])
def test_overrides_are_read_without_their_prefix(text, parsed):
    assert parse_override(text) == parsed


def test_categorical_values_keep_the_sweeps_order_and_numbers_are_sorted():
    assert value_order(["simclr", "byol", None, "simclr", "moco"]) == ["simclr", "byol", "moco"]
    assert value_order(["0.3", "1e-3", "0.1"]) == ["1e-3", "0.1", "0.3"]
