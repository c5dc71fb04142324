"""The run folder's bookkeeping: `manifest.json` (what each stage did and which
checkpoint it recorded) and `summary.json` (the results, derived from it).

Stages talk through these files only, so a rerun in the same folder can skip
finished stages and resume an interrupted one.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ssl_runner.errors import UserError
from ssl_runner.safe_io import write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
# Keys that may change between a run and its resumption without changing what
# the finished stages computed.
RESUMABLE_CHANGES = ("pipeline", "logger", "trainer.progress", "data.num_workers", "data.root", "data.decode_cache",
                     "data.cache_dir", "trainer.keep_freed_memory", "trainer.collective_timeout_s",
                     "trainer.progress_every_steps", "trainer.progress_every_seconds", "trainer.checkpoint_every_minutes",
                     # what a sweeper is told changes no figure
                     "objective")


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


class Manifest:
    """`manifest.json`: the config the folder was made with and each stage's record."""

    def __init__(self, run_dir: Path, data: Dict[str, Any], writable: bool = True) -> None:
        self.run_dir = run_dir
        self.data = data
        # False on every rank but 0 of a multi-process run.
        self.writable = writable
        # Whether this attempt has its entry in data["attempt_seconds"] yet.
        self._attempt_recorded = False

    @classmethod
    def open(cls, run_dir: Path, config: Dict[str, Any], writable: bool = True) -> "Manifest":
        """Open the folder's manifest, or start one. A folder made with a
        different config is refused when it holds results (a finished stage
        or a checkpoint): resuming there would mix two runs. One whose
        earlier attempt failed before producing anything (bad input) starts
        over with the new config."""
        path = run_dir / MANIFEST
        if path.is_file():
            data = json.loads(path.read_text())
            diffs = config_differences(data["config"], config)
            if diffs and not cls(run_dir, data).holds_results():
                log.info("%s: the earlier attempt here left no results (%s); starting over with this config",
                         run_dir, "; ".join(diffs[:3]))
                return cls(run_dir, {"format": 1, "created": _now(), "config": config, "stages": {}}, writable)
            if diffs:
                shown = "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
                raise UserError(
                    f"the run folder {run_dir} already holds a run made with a different config ({shown}). "
                    "Resuming there would mix two runs and could overwrite its checkpoints, so nothing was "
                    "changed. Choose a new folder (hydra.run.dir=...) or rerun with the original settings."
                )
            data["config"] = config
            return cls(run_dir, data, writable)
        return cls(run_dir, {"format": 1, "created": _now(), "config": config, "stages": {}}, writable)

    def save(self) -> None:
        if self.writable:
            write_json(self.run_dir / MANIFEST, self.data)

    def holds_results(self) -> bool:
        """Whether a stage finished here or left a checkpoint to resume from."""
        return any(record.get("status") == "done" or any((self.run_dir / name / "checkpoints").glob("*.ckpt"))
                   for name, record in self.data["stages"].items())

    def stage(self, name: str) -> Dict[str, Any]:
        return self.data["stages"].get(name, {})

    def is_done(self, name: str) -> bool:
        return self.stage(name).get("status") == "done"

    def start(self, name: str) -> None:
        record = self.data["stages"].setdefault(name, {})
        record.update(status="running", started=_now())
        record.pop("error", None)
        self.save()

    def finish(self, name: str, result: Dict[str, Any]) -> None:
        record = self.data["stages"].setdefault(name, {})
        record.update(result, status="done", finished=_now())
        if "encoder" in result:
            self.data["encoder"] = result["encoder"]
        self.save()

    def fail(self, name: str, error: BaseException) -> None:
        """Record the stage as interrupted, diverged or failed. Best effort: when
        the disk is full this cannot be written, and the error that stopped
        the stage is the one to report (a rerun finds the stage unfinished)."""
        record = self.data["stages"].setdefault(name, {})
        # Lightning turns Ctrl-C into SystemExit(1) after a graceful shutdown.
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        record.update(status="interrupted" if interrupted else getattr(error, "status", "failed"),
                      error=f"{type(error).__name__}: {error}"[:500], finished=_now())
        try:
            self.save()
        except OSError as err:
            log.warning("could not record %s's end in %s (%s)", name, self.run_dir / MANIFEST, err)

    def wall_seconds(self, this_attempt: float) -> float:
        """The run's wall clock over all its attempts: the earlier attempts'
        seconds as last recorded here (at each stage's start and end, and at a
        stop: an attempt killed outright, by SIGKILL or a power cut, counts up
        to its last stage's start), plus `this_attempt` so far, which is recorded."""
        attempts = self.data.setdefault("attempt_seconds", [])
        if not self._attempt_recorded:
            attempts.append(0.0)
            self._attempt_recorded = True
        attempts[-1] = round(this_attempt, 1)
        self.save()
        return round(sum(attempts), 1)

    def encoder_path(self) -> Optional[Path]:
        """The encoder the last pretrain stage of this run recorded."""
        rel = self.data.get("encoder")
        return self.run_dir / rel if rel else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else its architecture."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(accelerator: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {"accelerator": accelerator, "cpu": cpu_model(),
                            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["accelerator"] = "gpu"
    elif accelerator == "auto":
        info["accelerator"] = "cpu"
    return info


def run_status(manifest: Manifest, stages: Sequence[str]) -> Dict[str, Any]:
    """The run's status over its planned `stages`: "done" when all are, else
    the first unfinished stage's ("failed", "diverged", "interrupted",
    "running"; "pending" before it starts), with its error."""
    for name in stages:
        record = manifest.stage(name)
        if record.get("status") != "done":
            status = {"status": record.get("status", "pending"), "stage": name}
            return {**status, "error": record["error"]} if "error" in record else status
    return {"status": "done"}


def summarise(manifest: Manifest, facts: Dict[str, Any], stages: Sequence[str] = (),
              baselines: Sequence[str] = ()) -> Dict[str, Any]:
    """`summary.json`: the run's status over its planned `stages`, its facts,
    then each stage's results (accuracies in percent, last epoch), then the
    baselines (stages named in `baselines`)."""
    shown_stages: Dict[str, Any] = {}
    baseline: Dict[str, Any] = {}
    for name, record in manifest.data["stages"].items():
        shown = {k: v for k, v in record.items() if k not in ("started", "finished")}
        (baseline if name in baselines else shown_stages)[name] = shown
    return {**run_status(manifest, stages or list(manifest.data["stages"])), **facts, "stages": shown_stages,
            "baseline": baseline}


def relative_paths(tree: Any, run_dir: Path) -> Any:
    """`tree` with every string that is a path inside `run_dir` made relative
    to it, so that summary.json still holds when the folder moves (paths
    outside it, such as a `checkpoint=` input, stay as given)."""
    if isinstance(tree, dict):
        return {k: relative_paths(v, run_dir) for k, v in tree.items()}
    if isinstance(tree, list):
        return [relative_paths(v, run_dir) for v in tree]
    if isinstance(tree, str) and tree.startswith("/"):
        try:
            return str(Path(tree).resolve().relative_to(run_dir.resolve()))
        except ValueError:
            return tree
    return tree
