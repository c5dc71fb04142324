"""The number a job returns to its sweeper: one value of its `summary.json`,
chosen by `objective.key` (a dotted path, e.g. `stages.knn.top1`,
`baseline.linear_random_init.top1`, `stages.pretrain.loss`, the label-free
`stages.pretrain.rankme` (maximize), `.alignment` or `.uniformity`
(minimize); `auto`: the top-1 of the last stage that reports one), with
`objective.direction` saying whether larger is better. A job that failed,
diverged or lacks the value returns None: the sweeper records a failed
trial, never a made-up number."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

from ssl_runner.errors import UserError
from ssl_runner.eval.label_free import LABEL_FREE_MEASURES

AUTO = "auto"
DIRECTIONS = ("maximize", "minimize")
# The summary.json sections a key may start with (stage results), besides
# its top-level numbers (e.g. wall_seconds).
STAGE_SECTIONS = ("stages", "baseline")


def resolve_key(key: str, evaluation_stages: Sequence[str]) -> str:
    """`auto` -> `stages.<the last of the planned evaluation stages>.top1`
    (stages/registry.py `evaluation_stages`), or `stages.pretrain.loss` when
    the run evaluates nothing; any other key as it is."""
    if key != AUTO:
        return key
    return f"stages.{evaluation_stages[-1]}.top1" if evaluation_stages else "stages.pretrain.loss"


def check_objective(key: str, direction: str, stages: Sequence[str], baselines: Sequence[str]) -> None:
    """A key that cannot name a value of this run fails before training
    (`stages`: the planned stages, twins included; `baselines`: the twins' names)."""
    if direction not in DIRECTIONS:
        raise UserError(f"objective.direction={direction!r} is not one of {', '.join(DIRECTIONS)}. "
                        "Use maximize for an accuracy, minimize for a loss.")
    parts = key.split(".")
    if key == AUTO or parts[0] not in STAGE_SECTIONS:
        return
    planned = [s for s in stages if (s in baselines) == (parts[0] == "baseline")]
    if len(parts) < 3 or parts[1] not in planned:
        raise UserError(
            f"objective.key={key!r} names no value this run reports: under {parts[0]}, summary.json holds "
            f"{', '.join(planned) or 'nothing'} (each with top1; pretrain with loss, rankme, alignment, "
            f"uniformity). Use e.g. objective.key="
            f"{parts[0]}.{(list(planned) or ['knn'])[-1]}.top1, or objective.key=auto for the last stage's top-1.")


def check_label_free_objective(key: str, label_free: bool) -> None:
    """A key naming a label-free monitor's figure (stages.pretrain.rankme,
    .alignment, .uniformity) needs the monitor on (validation.py asks)."""
    parts = key.split(".")
    if parts[:2] == ["stages", "pretrain"] and len(parts) == 3 and parts[2] in LABEL_FREE_MEASURES and not label_free:
        raise UserError(
            f"objective.key={key!r} is a label-free monitor's figure, but monitor.label_free=false, so the "
            f"pretrain stage does not measure it. Set monitor.label_free=true, or choose another objective.key.")


def lookup(summary: Dict[str, Any], key: str) -> Any:
    node: Any = summary
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def objective_value(summary: Dict[str, Any], key: str) -> Optional[float]:
    """The finite number at `key` in a finished job's summary, else None."""
    if summary.get("status", "done") != "done":
        return None
    value = lookup(summary, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def objective_record(summary: Dict[str, Any], key: str, direction: str) -> Dict[str, Any]:
    """summary.json's `objective` section: the resolved key, the direction and the value (null until known)."""
    return {"key": key, "direction": direction, "value": objective_value(summary, key)}
