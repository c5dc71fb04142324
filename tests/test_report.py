"""Results tables from run folders: the figures come from the summaries, the
gains are differences of them, and facts missing from old summaries come from
the run's config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssl_runner.methods.registry import MethodInfo
from ssl_runner.report import markdown_table
from ssl_runner.seed_spread import methods_table


def _summary(folder: Path, method: str, knn: float, linear: float, random_knn: float,
             random_linear: float | None = None, **facts) -> Path:
    baseline = {"knn_random_init": {"top1": random_knn}}
    if random_linear is not None:
        baseline["linear_random_init"] = {"top1": random_linear}
    summary = {"method": method, "backbone": "resnet_tiny", "seed": 0, "epochs": 4, "batch_size": 256,
               "run_dir": f"/tmp/{folder.name}", "hardware": {"accelerator": "cpu", "cpu_threads": 2},
               "stages": {"knn": {"top1": knn}, "linear": {"top1": linear}, "pretrain": {"seconds": 120.0}},
               "baseline": baseline, "wall_seconds": 300.0, **facts}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "summary.json"


def _cells(table: str, method: str) -> dict:
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].strip("`") == method:
            return dict(zip(header, cells))
    raise AssertionError(f"no row for {method}")


def test_methods_table_gains_are_over_each_runs_own_random_init_encoder(tmp_path):
    jigsaw = _summary(tmp_path / "a", "jigsaw", 39.25, 42.50, 33.04, 33.57, image_size=64, feature_layer="layer3")
    simclr = _summary(tmp_path / "b", "simclr", 45.04, 49.23, 31.15)
    info = {"simclr": MethodInfo("SimCLR paper", "91.1"), "jigsaw": MethodInfo("Jigsaw paper", "none"),
            "rotnet": MethodInfo("RotNet paper", "89.06")}
    table = methods_table([jigsaw, simclr], info)
    row = _cells(table, "jigsaw")
    assert (row["kNN gain"], row["linear gain"], row["minutes"]) == ("6.21", "8.93", "5.00")
    assert _cells(table, "simclr")["linear gain"] == "–"  # no random-init linear in that run
    assert _cells(table, "rotnet")["linear top-1"] == "–"  # registered, never run
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| `simclr`", "| `jigsaw`", "| `rotnet`"]


def test_methods_table_pools_each_methods_seeds_and_refuses_two_recipes(tmp_path):
    runs = [_summary(tmp_path / f"s{seed}", "simclr", knn, linear, random_knn, random_linear, seed=seed,
                     wall_seconds=wall)
            for seed, knn, linear, random_knn, random_linear, wall in
            [(2, 46.0, 49.0, 31.0, 35.0, 360.0), (0, 45.0, 48.0, 31.0, 35.0, 240.0), (1, 44.0, 50.0, 32.0, 36.0, 300.0)]]
    info = {"simclr": MethodInfo("SimCLR paper", "91.1"), "rotnet": MethodInfo("RotNet paper", "89.06")}
    row = _cells(methods_table(runs, info), "simclr")
    # kNN 45 ± 1; kNN gains 15, 14, 12 (each over its own random init): 13.67 ± 1.53;
    # linear 49 ± 1;
    # linear gains 14, 13, 14: 13.67 ± 0.58.
    assert (row["seeds"], row["kNN top-1"], row["kNN gain"]) == ("0, 1, 2", "45.00 ± 1.00", "13.67 ± 1.53")
    assert (row["linear top-1"], row["linear gain"], row["minutes"]) == ("49.00 ± 1.00", "13.67 ± 0.58", "5.00")
    assert _cells(methods_table(runs[:1], info), "simclr")["kNN top-1"] == "46.00"  # one seed: no spread
    other = _summary(tmp_path / "other", "simclr", 40.0, 44.0, 31.0, seed=3, epochs=8)
    with pytest.raises(ValueError, match="two recipes of simclr"):
        methods_table([*runs, other], info)
    failed = _summary(tmp_path / "failed", "simclr", 40.0, 44.0, 31.0, seed=4, status="diverged")
    with pytest.raises(ValueError, match="did not finish"):
        methods_table([*runs, failed], info)


def test_results_table_reads_missing_facts_from_the_runs_config(tmp_path):
    old = _summary(tmp_path / "old", "jigsaw", 39.25, 42.50, 33.04, 33.57)
    (old.parent / "config.yaml").write_text("data:\n  image_size: 64\neval:\n  feature_layer: layer3\n")
    new = _summary(tmp_path / "new", "rotnet", 42.69, 46.94, 31.15, 34.90, image_size=32, feature_layer=None)
    bare = _summary(tmp_path / "bare", "simclr", 45.04, 49.23, 31.15)
    table = markdown_table([old, new, bare])
    assert (_cells(table, "jigsaw")["image px"], _cells(table, "jigsaw")["features"]) == ("64", "layer3")
    assert (_cells(table, "rotnet")["image px"], _cells(table, "rotnet")["features"]) == ("32", "h")
    assert (_cells(table, "simclr")["image px"], _cells(table, "simclr")["features"]) == ("–", "–")
    assert _cells(table, "jigsaw")["random-init linear"] == "33.57"
