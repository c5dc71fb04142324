"""W&B dashboards (logger=wandb, offline): a real 2-job multirun, then the
runs W&B wrote, read back from its transaction logs (`run-*.wandb`): the
grouping, the sweep's tag, the metric names, the summary run's figures, its
encoder artifact and its pictures."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import cli

from ssl_runner.sweeps.job_info import sweep_name
from ssl_runner.wandb_logging import override_values, summary_figures, wandb_metric_name

pytestmark = pytest.mark.integration

STAGES = ["knn", "knn_random_init", "linear", "linear_random_init", "pretrain"]


def test_wandb_names_carry_the_stage_and_overrides_become_values():
    assert wandb_metric_name("linear", "test/top1") == "linear/top1"
    assert wandb_metric_name("linear_random_init", "test/top1") == "linear_random_init/top1"
    assert wandb_metric_name("linear", "train/loss") == "linear/train/loss"
    assert wandb_metric_name("pretrain", "val/knn_top1") == "pretrain/val/knn_top1"
    assert wandb_metric_name("knn_random_init", "knn_random_init/top1") == "knn_random_init/top1"
    assert wandb_metric_name("pretrain", "epoch") == "epoch"
    assert override_values(["optimizer.lr=0.1", "seed=3", "+method.extra=abc", "~monitor",
                            "pipeline.stages=[pretrain,knn]"]) == {
        "optimizer.lr": 0.1, "seed": 3, "method.extra": "abc", "pipeline.stages": ["pretrain", "knn"]}


def _log_records(path: Path):
    """The records of a W&B transaction log: a 7-byte file header, then
    LevelDB-style 32 KiB blocks of fragments, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a header: padding
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        fragment = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = fragment if kind in (1, 2) else pending + fragment
        if kind in (1, 4):
            yield pending
            pending = b""


def _updates(items) -> Dict[str, Any]:
    """Summary or config updates as a dict; a nested key (an image's fields) nests."""
    out: Dict[str, Any] = {}
    for item in items:
        keys = [item.key] if item.key else list(item.nested_key)
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)
    return out


def _wandb_runs(run_dir: Path) -> List[Dict[str, Any]]:
    """Every offline W&B run in `run_dir/wandb`: its run record (group, job
    type, tags, config), its summary and history keys, its artifacts."""
    from wandb.proto import wandb_internal_pb2

    runs = []
    for log_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run: Dict[str, Any] = {"folder": log_file.parent, "summary": {}, "config": {}, "history": set(),
                               "artifacts": []}
        for data in _log_records(log_file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(group=record.run.run_group, job_type=record.run.job_type, tags=list(record.run.tags))
                run["config"].update(_updates(record.run.config.update))
            elif kind == "config":
                run["config"].update(_updates(record.config.update))
            elif kind == "summary":
                run["summary"].update(_updates(record.summary.update))
            elif kind == "history":
                run["history"] |= {item.key or item.nested_key[0] for item in record.history.item}
            elif kind == "artifact":
                run["artifacts"].append(record.artifact)
        runs.append(run)
    return runs


def test_the_summary_runs_figures_include_each_transfer_target():
    summary = {"status": "done", "stages": {
        "knn": {"top1": 40.0, "protocol": {"name": "knn"}},
        "transfer": {"targets": {"cifar100": {"knn_top1": 12.5, "linear_top1": 15.0, "protocol": {"name": "x"}}}}},
        "baseline": {"knn_random_init": {"top1": 30.0}}}
    figures = summary_figures(summary)
    assert figures["knn/top1"] == 40.0 and figures["knn_random_init/top1"] == 30.0
    assert figures["transfer/cifar100/knn_top1"] == 12.5 and figures["transfer/cifar100/linear_top1"] == 15.0
    assert not any("protocol" in k for k in figures)


def test_a_sweep_on_wandb_groups_by_pipeline_tags_the_sweep_and_leaves_a_summary_run(tmp_path, cifar_root):
    sweep_dir = tmp_path / "sweep"
    proc = cli(cifar_root, "-m", "method=simclr", "data=cifar10", "experiment=smoke", "logger=wandb",
               "data.subset=500", "data.test_subset=500", "trainer.max_epochs=1",
               "eval.linear.epochs=1", "pipeline.plots=true", "optimizer.lr=0.1,0.2", f"hydra.sweep.dir={sweep_dir}",
               cwd=tmp_path, extra_env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
                                        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
                                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_dirs = sorted(p.parent for p in sweep_dir.glob("*/summary.json"))
    assert len(job_dirs) == 2
    groups, lrs = [], []
    for job_dir in job_dirs:
        summary = json.loads((job_dir / "summary.json").read_text())
        found = _wandb_runs(job_dir)
        runs = {run["job_type"]: run for run in found}
        # One run per stage and the summary run, all in the pipeline's group, all tagged with the sweep.
        assert sorted(runs) == sorted([*STAGES, "summary"]) and len(found) == 6
        assert len({run["group"] for run in runs.values()}) == 1
        groups.append(runs["summary"]["group"])
        assert all(run["tags"] == [sweep_name(sweep_dir)] for run in runs.values())
        assert sweep_name(sweep_dir).endswith(f"{tmp_path.name}/sweep")
        # The job's overrides as values, columns of W&B's runs table.
        override = runs["summary"]["config"]["override"]
        assert runs["pretrain"]["config"]["override"] == override
        lrs.append(override["optimizer.lr"])
        assert runs["summary"]["config"]["optimizer"]["lr"] == override["optimizer.lr"]
        assert runs["summary"]["config"]["sweep"]["name"] == sweep_name(sweep_dir)

        # Metric names carry the stage (W&B only: the CSV files keep Lightning's names).
        linear, floor = runs["linear"], runs["linear_random_init"]
        assert {"linear/top1", "linear/train/loss"} <= linear["history"]
        assert {"linear_random_init/top1", "linear_random_init/train/loss"} <= floor["history"]
        assert "pretrain/train/loss_epoch" in runs["pretrain"]["history"]
        assert runs["knn"]["summary"]["knn/top1"] == pytest.approx(summary["stages"]["knn"]["top1"], abs=0.01)
        assert linear["summary"]["linear/top1"] == pytest.approx(summary["stages"]["linear"]["top1"], abs=0.01)
        for run in runs.values():
            unprefixed = [k for k in run["history"] if not k.startswith("_") and k not in ("epoch", "trainer/global_step")
                          and not k.startswith(("images/", f"{run['job_type']}/"))]
            assert not unprefixed, (run["job_type"], unprefixed)
        assert "test/top1" in (job_dir / "linear" / "metrics.csv").read_text().splitlines()[0].split(",")

        # The summary run: every stage's figures from summary.json, in one row.
        figures = runs["summary"]["summary"]
        for section in ("stages", "baseline"):
            for stage, record in summary[section].items():
                for key in ("top1", "loss"):
                    if key in record:
                        assert figures[f"{stage}/{key}"] == record[key], (stage, key)
        assert {"knn/top1", "linear/top1", "knn_random_init/top1", "linear_random_init/top1"} <= set(figures)
        assert figures["linear/top1"] == summary["stages"]["linear"]["top1"]
        assert figures["linear_random_init/top1"] == summary["baseline"]["linear_random_init"]["top1"]
        if isinstance(summary.get("objective"), dict) and summary["objective"].get("value") is not None:
            assert figures["objective"] == summary["objective"]["value"]

        # The encoder, as a model artifact with the file's size and MD5.
        (artifact,) = runs["summary"]["artifacts"]
        encoder = (job_dir / "pretrain" / "encoder.pt").read_bytes()
        (entry,) = artifact.manifest.contents
        assert artifact.type == "model" and entry.path == "encoder.pt" and entry.size == len(encoder)
        assert entry.digest == base64.b64encode(hashlib.md5(encoder).digest()).decode()

        # Every picture the stages drew, as an image, its file beside the run.
        plots = {rel for section in ("stages", "baseline") for record in summary[section].values()
                 for rel in record.get("plots", [])}
        assert {"pretrain/curves.png", "pretrain/views.png", "knn/embedding.png", "linear/curves.png"} <= plots
        images = {k: v for k, v in figures.items() if k.startswith("images/")}
        assert set(images) == {f"images/{rel.removesuffix('.png')}" for rel in plots}
        for image in images.values():
            assert image["_type"] == "image-file"
            assert (runs["summary"]["folder"] / "files" / image["path"]).is_file()
    assert len(set(groups)) == 2 and sorted(lrs) == [0.1, 0.2]
