"""Every accuracy carries its protocol: the stage's settings that change the
figure, in summary.json, the log line and the tables."""

from __future__ import annotations

import pytest

from conftest import compose_config
from ssl_runner.protocols import PROTOCOLS, protocol_label, protocol_notes, with_protocol
from ssl_runner.report import protocols_note


@pytest.fixture(scope="module")
def cfg():
    return compose_config(["experiment=smoke", "eval.knn.k=50", "eval.linear.epochs=7", "eval.feature_layer=layer3"])


def test_each_stage_family_gets_its_protocol_with_the_settings_that_change_its_figure(cfg):
    knn = with_protocol("knn_random_init", cfg, {"top1": 30.0})["protocol"]
    assert knn == {"name": "knn", "k": 50, "temperature": 0.1, "features": "resnet_tiny layer3, pooled, unaugmented images"}
    linear = with_protocol("linear", cfg, {"top1": 40.0, "features": "cached, unaugmented"})["protocol"]
    assert linear["name"] == "linear" and linear["backbone"] == "frozen" and linear["epochs"] == 7
    assert linear["features"] == "resnet_tiny layer3, pooled, cached, unaugmented" and linear["augmentation"] == "none"
    finetune = with_protocol("finetune", cfg, {"top1": 40.0})["protocol"]
    assert finetune["name"] == "finetune" and finetune["backbone"] == "fine-tuned"
    assert finetune["augmentation"] == "crop + flip"
    probe = with_protocol("probe_rotation", cfg, {"top1": 80.0, "chance": 25.0})["protocol"]
    assert probe["name"] == "probe" and probe["property"] == "rotation" and probe["chance"] == 25.0
    assert {p["name"] for p in (knn, linear, finetune, probe)} <= set(PROTOCOLS)


def test_a_stage_that_states_its_own_protocol_keeps_it_and_figures_without_top1_get_none(cfg):
    own = {"top1": 10.0, "protocol": {"name": "semi", "label_fraction": 0.01}}
    assert with_protocol("semi_1pct", cfg, own) == own
    assert "protocol" not in with_protocol("export", cfg, {"encoder": "x.pt"})
    pretrain = with_protocol("pretrain", cfg, {"loss": 1.0, "online_probe_top1": 30.0})
    assert pretrain["protocols"]["online_probe_top1"]["name"] == "online_probe"
    assert "knn_monitor_top1" not in pretrain["protocols"]  # only the figures it has


def test_labels_and_the_tables_note(cfg):
    assert protocol_label({"name": "knn", "k": 200, "temperature": 0.1}) == "knn (k 200, τ 0.1)"
    assert protocol_label({"name": "semi", "backbone": "fine-tuned", "label_fraction": 0.1, "epochs": 30}) == \
        "semi (fine-tuned, 10% of the labels, 30 epochs)"
    assert protocol_label(None) == "protocol not recorded"
    runs = [{"stages": {"knn": {"top1": 40.0, "protocol": with_protocol("knn", cfg, {"top1": 1})["protocol"]}}},
            {"stages": {"knn": {"top1": 41.0, "protocol": {"name": "knn", "k": 200, "temperature": 0.1}}}}]
    notes = protocol_notes(runs, ["knn"])
    assert len(notes) == 2 and notes[0].startswith("- `knn`: knn (k 50, τ 0.1)")  # two protocols, both said
    assert "last-epoch top-1 on the test split" in protocols_note(runs)
    assert protocols_note([{"stages": {"knn": {"top1": 40.0}}}]) == ""  # old summaries: no note
