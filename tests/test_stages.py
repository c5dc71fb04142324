"""The stage registry and the pipeline's plan: which stages run, in which
order, and what the schema accepts."""

from __future__ import annotations

import pytest
from conftest import compose_config

from ssl_runner.errors import UserError
from ssl_runner.pipeline import planned_stages
from ssl_runner.stages import STAGES, random_init_names, stage_names
from ssl_runner.stages.registry import ENCODER, PRETRAIN_SPLIT, TEST_SPLIT, TRANSFER_DATA, Stage, register_stage


def test_the_schema_accepts_the_registered_stages_and_no_twin():
    assert set(stage_names()) == {"pretrain", "knn", "linear", "finetune", "linear_concat", "nonlinear",
                                  "probe_rotation", "probe_color", "semi_1pct", "semi_10pct", "transfer", "export"}
    assert set(random_init_names()) == {"knn_random_init", "linear_random_init", "nonlinear_random_init",
                                        "probe_rotation_random_init", "probe_color_random_init",
                                        "semi_1pct_random_init", "semi_10pct_random_init"}
    for twin in random_init_names():
        assert twin in STAGES and twin not in stage_names()
        assert ENCODER not in STAGES[twin].reads  # an untrained encoder: nothing to load


def test_an_unknown_stage_is_refused_with_the_registered_list():
    with pytest.raises(UserError, match=r"unknown stage 'knnn'.*Available stages: pretrain, knn, linear"):
        compose_config(["pipeline.stages=[pretrain,knnn]"])
    with pytest.raises(UserError, match="unknown stage 'knn_random_init'"):
        compose_config(["pipeline.stages=[knn_random_init]"])


def test_only_pretraining_provides_the_encoder_and_every_evaluation_reads_the_test_split():
    assert [name for name, s in STAGES.items() if ENCODER in s.provides] == ["pretrain"]
    assert all(TEST_SPLIT in s.reads for s in STAGES.values() if s.name not in ("export", "transfer"))
    assert STAGES["export"].reads == (ENCODER,)  # it writes the encoder's weights, reads no image
    # Transfer reads other data sets' splits, never this one's test split: it is not the auto objective.
    assert STAGES["transfer"].reads == (ENCODER, TRANSFER_DATA)
    assert PRETRAIN_SPLIT in STAGES["pretrain"].reads


def test_a_stage_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="'knn' is registered twice"):
        register_stage(Stage("knn", lambda ctx: {}, reads=(), writes=()))
    assert STAGES["knn"].run.__name__ == "knn"


@pytest.mark.parametrize("overrides, expected", [
    ([], ["pretrain", "knn", "linear"]),
    (["eval.random_baseline=true"], ["pretrain", "knn", "linear", "knn_random_init", "linear_random_init"]),
    # The kNN floor runs even when knn is not planned.
    (["pipeline=pretrain", "eval.random_baseline=true"], ["pretrain", "knn_random_init"]),
    # LooC adds its LooC++ probe and the rotation probe after linear; their twins follow the kNN floor.
    (["method=looc", "eval.random_baseline=true"],
     ["pretrain", "knn", "linear", "linear_concat", "probe_rotation", "knn_random_init", "linear_random_init",
      "probe_rotation_random_init"]),
    (["method=looc", "pipeline.stages=[pretrain,knn]"], ["pretrain", "knn"]),
    (["experiment=rotnet_cifar10", "eval.random_baseline=true"],
     ["pretrain", "knn", "linear", "nonlinear", "knn_random_init", "linear_random_init", "nonlinear_random_init"]),
    (["pipeline.stages=[pretrain,probe_color,knn]", "eval.random_baseline=true"],
     ["pretrain", "probe_color", "knn", "knn_random_init", "probe_color_random_init"]),
])
def test_the_plan(overrides, expected):
    assert planned_stages(compose_config(overrides)) == expected
