"""Config composition and schema validation: every preset validates, and a
misspelt key or a wrong type is refused with the key named."""

from pathlib import Path

import pytest

from conftest import compose_config
from ssl_runner.__main__ import config_dir
from ssl_runner.errors import UserError

CONF = Path(config_dir())
GROUPS = ["method", "data", "views", "backbone", "optimizer", "scheduler", "trainer", "logger", "pipeline",
          "experiment"]


def test_default_config_validates_with_types():
    cfg = compose_config()
    assert cfg.method.name == "simclr"
    assert cfg.method.temperature == 0.5 and cfg.method.proj_output_dim == 128
    assert cfg.optimizer.name == "lars" and isinstance(cfg.optimizer.lr, float)
    assert list(cfg.pipeline.stages) == ["pretrain", "knn", "linear"]
    assert cfg.data.root.endswith("cifar10")


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_validates(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options, f"no options in conf/{group}"
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "data" and option == "imagefolder":
            overrides.append("data.root=/some/folder")
        compose_config(overrides)


def test_data_root_defaults_to_env_variable(monkeypatch):
    monkeypatch.setenv("SSL_RUNNER_DATA", "/datasets")
    assert compose_config().data.root == "/datasets/cifar10"


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(UserError) as err:
        compose_config(["+optimizer.lrr=0.1"])
    assert "optimizer.lrr" in str(err.value) and "optimizer.lr" in str(err.value).replace("optimizer.lrr", "")


def test_misspelt_nested_key_in_eval_is_named():
    with pytest.raises(UserError, match="eval.linear.epoch"):
        compose_config(["+eval.linear.epoch=3"])


def test_misspelt_method_key_is_named():
    with pytest.raises(UserError) as err:
        compose_config(["+method.temprature=0.1"])
    assert "method.temprature" in str(err.value) and "temperature" in str(err.value)


def test_wrong_type_is_named():
    with pytest.raises(UserError, match="optimizer.lr"):
        compose_config(["optimizer.lr=fast"])
    with pytest.raises(UserError, match="trainer.max_epochs"):
        compose_config(["trainer.max_epochs=1.5"])


def test_values_outside_their_choices_are_refused():
    with pytest.raises(UserError, match="optimizer.name.*sgd, lars, adamw"):
        compose_config(["optimizer.name=rmsprop"])
    with pytest.raises(UserError, match="unknown stage 'probe'"):
        compose_config(["pipeline.stages=[pretrain,probe]"])
    with pytest.raises(UserError, match="data.batch_size"):
        compose_config(["data.batch_size=0"])


def test_experiment_preset_overrides_groups_and_cli_wins_over_preset():
    cfg = compose_config(["experiment=smoke"])
    assert cfg.backbone.name == "resnet_tiny" and cfg.data.subset == 2000 and cfg.eval.random_baseline
    cfg = compose_config(["experiment=smoke", "backbone=resnet18", "data.subset=500"])
    assert cfg.backbone.name == "resnet18" and cfg.data.subset == 500


def test_data_set_picks_its_default_views_and_the_command_line_wins():
    assert compose_config(["data=cifar10"]).views.name == "simclr_cifar"
    assert compose_config(["data=imagefolder", "data.root=/x"]).views.name == "simclr_imagenet"
    assert compose_config(["data=imagefolder", "data.root=/x", "views=simclr_cifar"]).views.name == "simclr_cifar"


def test_a_required_value_left_unset_is_named():
    with pytest.raises(UserError, match=r"'data.root' has no value.*data.root=\.\.\."):
        compose_config(["data=imagefolder"])


def test_per_method_preset_adjustments_apply_only_to_their_pair_and_lose_to_the_command_line():
    # conf/experiment/<preset>/<method>.yaml: beside the preset it adjusts.
    paths = sorted((CONF / "experiment").glob("*/*.yaml"))
    assert len(paths) == 10
    for path in paths:
        experiment, method = path.parent.name, path.stem
        assert (CONF / "experiment" / f"{experiment}.yaml").is_file(), path
        assert (CONF / "method" / f"{method}.yaml").is_file(), path
        compose_config([f"experiment={experiment}", f"method={method}"])  # validates
    npid = compose_config(["experiment=cifar10_cpu", "method=npid"])
    assert (npid.optimizer.name, npid.optimizer.lr, npid.trainer.max_epochs) == ("sgd", 0.03, 12)
    simclr = compose_config(["experiment=cifar10_cpu", "method=simclr"])
    assert (simclr.optimizer.name, simclr.trainer.max_epochs) == ("lars", 4)
    assert compose_config(["experiment=cifar10_cpu", "method=npid", "trainer.max_epochs=3"]).trainer.max_epochs == 3
    moco = compose_config(["experiment=looc_rotation_cpu", "method=mocov2"])
    assert moco.method.symmetric is False and moco.views.rotation_p == 0.75


def test_rotnet_cifar10_preset_is_the_papers_recipe():
    cfg = compose_config(["experiment=rotnet_cifar10"])
    assert (cfg.method.name, cfg.backbone.name, cfg.backbone.num_blocks, cfg.data.batch_size) == (
        "rotnet", "nin", 4, 128)
    o, s = cfg.optimizer, cfg.scheduler
    assert (o.name, o.lr, o.reference_batch, o.momentum, o.nesterov, o.weight_decay) == (
        "sgd", 0.1, 128, 0.9, True, 5e-4)
    assert (s.name, list(s.milestones), s.gamma, s.warmup_epochs, cfg.trainer.max_epochs) == (
        "steps", [60, 120, 160], 0.2, 0, 200)
    assert cfg.eval.feature_layer == "block2" and "nonlinear" in cfg.pipeline.stages
    assert "nonlinear" not in compose_config([]).pipeline.stages  # not in the default pipelines


def test_scheduler_and_nesterov_settings_are_validated():
    with pytest.raises(UserError, match="scheduler.milestones.*strictly increasing"):
        compose_config(["scheduler=steps", "scheduler.milestones=[60,30]"])
    with pytest.raises(UserError, match="scheduler.gamma"):
        compose_config(["scheduler=steps", "scheduler.gamma=0"])
    with pytest.raises(UserError, match="optimizer.nesterov.*adamw"):
        compose_config(["optimizer=adamw", "optimizer.nesterov=true"])
    with pytest.raises(UserError, match="eval.nonlinear.pool.*max, avg"):
        compose_config(["eval.nonlinear.pool=min"])


@pytest.mark.parametrize("overrides,message", [
    (["method=byol", "method.momentum_schedule=linear"], "'method.momentum_schedule' is 'linear', which is not one "
                                                          "of: constant, cosine."),
    (["method=mocov1", "method.momentum_schedule=step"], "method.momentum_schedule"),
    (["method=looc", "method.momentum_schedule=step"], "method.momentum_schedule"),
    (["method=relative_loc", "method.scale=huge"], "'method.scale' is 'huge', which is not one of: cifar, cifar64, "
                                                   "96px, imagenet."),
    (["method=context_encoder", "method.mask=circle"], "'method.mask' is 'circle', which is not one of: centre, "
                                                       "random_block, random_region."),
    (["method=counting", "method.interpolations=[bilinear,lanczos]"], r"'method.interpolations' is \['bilinear', "
                                                                       r"'lanczos'\]; it needs one or more of"),
    (["method=exemplar", "method.num_exemplars=0"], "must both be at least 1"),
])
def test_each_methods_own_checks_run_with_the_config(overrides, message):
    """`BaseMethod.check_config`, declared by each method, runs in `validate`."""
    with pytest.raises(UserError, match=message):
        compose_config(overrides)
