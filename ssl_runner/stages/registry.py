"""The stage registry: every stage a pipeline can run, as a record.

A stage is a function of the run context that returns the figures recorded
in the manifest (its `result`). Its record says what it reads (the encoder
this run's pretraining exported, or `checkpoint=`; the train and test
splits), what it leaves in its folder, and which stage, if any, is its
twin on an untrained encoder (run with `eval.random_baseline`: the floor its
figure must beat). The schema's list of stages and the pipeline's plan both
come from here, so adding a stage is its module plus one `register_stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from ssl_runner.stages.context import RunContext

# What a stage can read. "encoder": the trained encoder (this run's pretrain
# export, else checkpoint=PATH); the splits are decoded before the first stage
# runs, so that missing data fails before anything is recorded.
ENCODER, TRAIN_SPLIT, TEST_SPLIT = "encoder", "train split", "test split"
# data.pretrain_split (STL-10's train+unlabeled; the train split when unset)
# and eval.transfer's data sets, decoded before the first stage too.
PRETRAIN_SPLIT, TRANSFER_DATA = "pretrain split", "transfer data"
# The RunContext property that decodes each kind of data a stage reads.
DATA_READS = {TRAIN_SPLIT: "train_images", TEST_SPLIT: "test_images", PRETRAIN_SPLIT: "pretrain_images",
              TRANSFER_DATA: "transfer_targets"}


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[["RunContext"], Dict[str, Any]]
    reads: Tuple[str, ...]
    # Files and folders it leaves under <run>/<name>/ (documentation and tests).
    writes: Tuple[str, ...]
    # What it records in the manifest for later stages to read (pretrain: ENCODER).
    provides: Tuple[str, ...] = ()
    # The same evaluation on an untrained encoder of the same architecture.
    random_init: Optional["Stage"] = None
    # Whether eval.random_baseline runs this twin even when its trained stage
    # is not planned (the kNN floor: every run with a baseline reports it).
    twin_always: bool = False


STAGES: Dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Make `stage` (and its random-init twin) runnable by name."""
    for record in (stage, stage.random_init):
        if record is None:
            continue
        if record.name in STAGES:
            raise ValueError(f"stage '{record.name}' is registered twice")
        STAGES[record.name] = record
    return stage


def stage_names() -> List[str]:
    """The stages `pipeline.stages` may list (twins are added by the plan, never listed)."""
    twins = set(random_init_names())
    return [name for name in STAGES if name not in twins]


def random_init_names() -> List[str]:
    return [s.random_init.name for s in STAGES.values() if s.random_init is not None]


def evaluation_stages(stages: List[str]) -> List[str]:
    """Those of `stages` that evaluate the trained encoder on the test split
    (each reports a top-1 under `stages` in summary.json), in order; not the
    random-init twins, which report under `baseline`."""
    twins = set(random_init_names())
    return [s for s in stages if s not in twins and {ENCODER, TEST_SPLIT} <= set(STAGES[s].reads)]
