"""The batch sizes of pretraining (distributed/batch.py): per device, per step
across the ranks and global (x gradient accumulation), resolved from
data.batch_size or data.global_batch_size; the config is never rewritten."""

from __future__ import annotations

import pytest
from conftest import compose_config

from ssl_runner.distributed import launch
from ssl_runner.distributed.batch import BatchSizes, batch_sizes
from ssl_runner.errors import UserError


def test_without_a_global_batch_the_per_device_batch_is_data_batch_size():
    cfg = compose_config(["trainer=ddp_cpu", "data.batch_size=64", "trainer.accumulate_grad_batches=3"])
    assert batch_sizes(cfg, 2) == BatchSizes(per_device=64, per_step=128, global_batch=384)
    assert batch_sizes(cfg, 1) == BatchSizes(per_device=64, per_step=64, global_batch=192)


def test_global_batch_is_split_across_processes_and_refused_when_it_does_not_divide():
    cfg = compose_config(["trainer=ddp_cpu", "data.global_batch_size=512"])
    assert launch.check_plan(cfg) == 2 and batch_sizes(cfg, 2).per_device == 256
    cfg = compose_config(["trainer=ddp_cpu", "trainer.accumulate_grad_batches=2", "data.global_batch_size=512"])
    launch.check_plan(cfg)
    assert batch_sizes(cfg, 2).per_device == 128
    assert batch_sizes(cfg, 2) == BatchSizes(per_device=128, per_step=256, global_batch=512)
    cfg = compose_config(["trainer=ddp_cpu", "trainer.devices=3", "data.global_batch_size=512"])
    with pytest.raises(UserError, match=r"global_batch_size=512 does not divide across 3 process"):
        launch.check_plan(cfg)
    with pytest.raises(UserError, match=r"global_batch_size=512 does not divide across 3 process.*multiple of 3"):
        batch_sizes(cfg, 3)
    # With accumulation the parts are processes x steps: 512 / (2 x 3) does not divide either.
    cfg = compose_config(["trainer=ddp_cpu", "trainer.accumulate_grad_batches=3", "data.global_batch_size=512"])
    with pytest.raises(UserError, match=r"2 process\(es\) x 3 accumulation step\(s\) \(6 parts\)"):
        batch_sizes(cfg, 2)


def test_check_plan_leaves_the_configured_batch_size_unchanged():
    cfg = compose_config(["trainer=ddp_cpu", "data.batch_size=100", "trainer.accumulate_grad_batches=2",
                          "data.global_batch_size=512"])
    assert launch.check_plan(cfg) == 2
    assert (cfg.data.batch_size, cfg.data.global_batch_size) == (100, 512)
    assert batch_sizes(cfg, 2).per_device == 128


@pytest.mark.parametrize("stages, key", [("[pretrain,finetune]", "finetune"), ("[pretrain,semi_1pct]", "semi")])
def test_a_stage_training_on_images_needs_a_batch_that_divides_across_the_processes(stages, key):
    cfg = compose_config(["trainer=ddp_cpu", f"pipeline.stages={stages}", f"eval.{key}.batch_size=255"])
    with pytest.raises(UserError, match=rf"eval.{key}.batch_size=255 .* does not divide across 2 processes"):
        launch.check_plan(cfg)
    # The linear probe on cached features trains every rank on all of them: any batch.
    assert launch.check_plan(compose_config(["trainer=ddp_cpu", "eval.linear.batch_size=255"])) == 2
