"""Expected versus got: `python -m ssl_runner.reproduce` runs a preset's
recipes over seeds and compares each declared figure with its expectation;
`seeds=[...]` runs one recipe over seeds as a multirun and pools them."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys

import pytest

from conftest import REPO, cli, cli_env
from ssl_runner.__main__ import expand_seeds
from ssl_runner.errors import UserError
from ssl_runner.expected import Comparison, compare, expected_file, load_expectations
from ssl_runner.reproduce import header, main as reproduce, method_seeds, recorded_expectations

# Small and quick: the reproduce machinery is the point, not the figures.
QUICK = ["data.subset=400", "data.test_subset=200", "trainer.max_epochs=1", "pipeline.stages=[pretrain,knn]",
         "eval.random_baseline=false", "pipeline.plots=false", "monitor.knn_every_n_epochs=0"]


def test_reproduce_two_recipes_two_seeds_shows_a_wrong_expectation_as_fail(cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSL_RUNNER_DATA", str(cifar_root.parent))
    monkeypatch.setenv("CI", "true")
    expected = tmp_path / "expected.yaml"
    # simclr's figure must land in [0, 100]: PASS; mocov1's is set wrong on purpose: FAIL.
    expected.write_text("source: test\nmethods:\n"
                        "  simclr:\n    stages.knn.top1: {value: 50.0, tolerance: 50.0}\n"
                        "  mocov1:\n    stages.knn.top1: {value: 99.0, tolerance: 0.1, source: a wrong value}\n")
    out = tmp_path / "out"
    args = ["smoke", "--methods", "simclr", "mocov1", "--seeds", "0", "1", "--out", str(out),
            "--expected", str(expected), "--", *QUICK]
    assert reproduce(args) == 1
    rows = {row["method"]: row for row in csv.DictReader((out / "reproduce.csv").open())}
    assert rows["simclr"]["verdict"] == "PASS" and rows["mocov1"]["verdict"] == "FAIL"
    for method in ("simclr", "mocov1"):
        got = [json.loads((out / f"{method}_seed{s}" / "summary.json").read_text())["stages"]["knn"]["top1"]
               for s in (0, 1)]
        assert got[0] != got[1], "two seeds gave the same figure"
        mean, std = statistics.fmean(got), statistics.stdev(got)
        assert rows[method]["got (last epoch)"] == f"{mean:.2f} ± {std:.2f}"
        assert rows[method]["n"] == "2" and rows[method]["seeds"] == "0 1"
    assert rows["mocov1"]["delta"] == f"{statistics.fmean(got) - 99.0:+.2f}"
    markdown = (out / "reproduce.md").read_text()
    assert "| mocov1 | stages.knn.top1 | 2 | 0 1 | 99.00 ± 0.10 |" in markdown and "FAIL" in markdown
    assert "data.subset=400" in markdown  # the overrides are said
    # Rerun: every run is already done, the same table comes back; --publish keeps the tables and figures.
    capsys.readouterr()
    assert reproduce([*args[:-len(QUICK) - 1], "--publish", str(tmp_path / "docs"), "--", *QUICK]) == 1
    kept = sorted(str(p.relative_to(tmp_path / "docs")) for p in (tmp_path / "docs").rglob("*") if p.is_file())
    assert kept == ["mocov1_seed0/config.yaml", "mocov1_seed0/summary.json", "mocov1_seed1/config.yaml",
                    "mocov1_seed1/summary.json", "reproduce.csv", "reproduce.md", "simclr_seed0/config.yaml",
                    "simclr_seed0/summary.json", "simclr_seed1/config.yaml", "simclr_seed1/summary.json"]
    assert "already done" in capsys.readouterr().err
    assert (out / "reproduce.md").read_text().split("\n", 1)[1] == markdown.split("\n", 1)[1]


def test_a_method_can_name_its_own_seeds():
    seeds = method_seeds(["simclr:0,1,2", "looc", "rotnet:4"], [0])
    assert seeds == {"simclr": [0, 1, 2], "looc": [0], "rotnet": [4]}
    assert "seeds per method" in header("cifar10_cpu", seeds, [], expected_file("cifar10_cpu"))
    assert "seeds 0, 1:" in header("cifar10_cpu", method_seeds(["simclr", "looc:0,1"], [0, 1]), [],
                                   expected_file("cifar10_cpu"))
    for bad in (["simclr:0,0"], ["simclr:a"], ["simclr:"], ["simclr", "simclr:1"], [":1"]):
        with pytest.raises(UserError, match="METHOD:S1,S2"):
            method_seeds(bad, [0])


def test_a_failed_run_fails_its_figure():
    summaries = [{"status": "done", "seed": 0, "stages": {"knn": {"top1": 40.0}}},
                 {"status": "diverged", "seed": 1, "stages": {"knn": {}}}]
    row = compare("simclr", "stages.knn.top1", summaries, None)
    assert row.verdict == "FAIL (1 run(s) failed)" and row.got == [40.0]
    assert compare("simclr", "stages.knn.top1", summaries[:1], None).verdict == "no expectation"


def test_expectation_files_are_well_formed_and_name_registered_methods(tmp_path):
    from ssl_runner.methods import METHODS

    for preset in ("smoke", "cifar10_cpu"):
        found = load_expectations(expected_file(preset))
        assert found and {e.method for e in found} <= set(METHODS)
        assert all(e.key.startswith(("stages.", "baseline.")) and e.tolerance > 0 for e in found)
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods:\n  simclr:\n    stages.knn.top1: {value: 1.0}\n")
    with pytest.raises(UserError, match="tolerance"):
        load_expectations(bad)
    with pytest.raises(UserError, match="no expected results"):
        load_expectations(tmp_path / "missing.yaml")


def test_seeds_become_a_multirun_over_seed():
    assert expand_seeds(["method=simclr", "seeds=[0,1,2]"]) == ["--multirun", "method=simclr", "seed=0,1,2"]
    assert expand_seeds(["-m", "optimizer.lr=0.1,1", "seeds=[3, 4]"]) == ["-m", "optimizer.lr=0.1,1", "seed=3,4"]
    assert expand_seeds(["method=simclr"]) == ["method=simclr"]
    for bad in (["seeds=[0,0]"], ["seeds=[a]"], ["seeds=[]"], ["seed=1", "seeds=[0,1]"],
                ["hparams_search=simclr_optuna", "seeds=[0,1]"]):
        with pytest.raises(UserError):
            expand_seeds(bad)


def test_seeds_run_each_seed_and_pool_them(cifar_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(cifar_root, "method=simclr", "experiment=smoke", "seeds=[0,1]", *QUICK, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted(s["seed"] for s in summaries) == [0, 1]
    knn = [s["stages"]["knn"]["top1"] for s in summaries]
    results = (sweep / "results.md").read_text()
    assert f"{statistics.fmean(knn):.2f} ± {statistics.stdev(knn):.2f}" in results
    assert "| 2 | 0, 1 |" in results  # n and the seeds of the pooled row


def test_reproduce_command_line_refuses_a_preset_without_expectations(tmp_path, cifar_root):
    proc = subprocess.run([sys.executable, "-m", "ssl_runner.reproduce", "no_such_preset", "--out", str(tmp_path)],
                          cwd=REPO, env=cli_env(cifar_root), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no expected results" in proc.stderr


def test_recorded_tolerance_is_three_stds_with_a_floor_and_wider_for_one_seed(tmp_path):
    def row(method, got):
        return Comparison(method, "stages.knn.top1", None, None, got, [], list(range(len(got))), 0, "measured")

    text = recorded_expectations("cifar10_cpu", [row("simclr", [40.0, 41.0, 42.0]), row("byol", [40.0, 40.1, 40.2]),
                                                 row("jigsaw", [39.25])], "python -m ssl_runner.reproduce ...")
    expected_yaml = tmp_path / "cifar10_cpu.yaml"
    expected_yaml.write_text(text)
    found = {e.method: e for e in load_expectations(expected_yaml)}
    assert found["simclr"].value == 41.0 and found["simclr"].tolerance == 3.0  # 3 x sample std 1.0
    assert found["byol"].tolerance == 1.0  # 3 x 0.1 is under the floor
    assert found["jigsaw"].value == 39.25 and found["jigsaw"].tolerance == 2.0  # one seed: no spread measured
