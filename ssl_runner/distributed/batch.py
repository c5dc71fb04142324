"""The batch sizes of a pretraining run, resolved in one place.

`data.batch_size` is per device; `data.global_batch_size`, when set, replaces
it and is divided over devices x nodes x gradient accumulation steps (a value
that does not divide is refused). The loaders need the per-device batch, the
learning-rate rule the global one, the reports both: they all ask
`batch_sizes`, and the config itself is never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from ssl_runner.errors import UserError


@dataclass(frozen=True)
class BatchSizes:
    # Images in one rank's DataLoader batch.
    per_device: int
    # per_device x world size: the images one optimizer micro-step consumes across the ranks.
    per_step: int
    # per_step x trainer.accumulate_grad_batches: the images behind one optimizer step.
    global_batch: int


def batch_sizes(cfg: DictConfig, world_size: int) -> BatchSizes:
    """The batch sizes of `cfg` on `world_size` processes."""
    accumulate = cfg.trainer.accumulate_grad_batches
    requested = cfg.data.global_batch_size
    if requested is None:
        per_device = cfg.data.batch_size
    else:
        parts = world_size * accumulate
        if requested % parts:
            raise UserError(
                f"data.global_batch_size={requested} does not divide across {world_size} process(es) x "
                f"{accumulate} accumulation step(s) ({parts} parts), so every device could not "
                f"get the same batch. Choose a multiple of {parts} (e.g. {max(parts, requested - requested % parts)}) "
                "or change trainer.devices / trainer.num_nodes."
            )
        per_device = requested // parts
    per_step = per_device * world_size
    return BatchSizes(per_device=per_device, per_step=per_step, global_batch=per_step * accumulate)
