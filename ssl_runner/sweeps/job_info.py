"""What a job of a Hydra multirun knows of its sweep: the sweep's name (the
sweep folder, relative to the folder that holds the sweeps), its job number and the
overrides that made this job. Read from Hydra's config; None outside a
multirun (a single run, or a test calling the pipeline directly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional


@dataclass(frozen=True)
class SweepJob:
    # The sweep folder's path below its top folder, e.g. "multirun/2026-12-06/14-30-00"
    # or "sweeps/simclr_optuna_smoke": the W&B tag and the results table's title.
    name: str
    folder: str
    job: int
    overrides: List[str]

    def as_dict(self) -> Dict[str, object]:
        return {"name": self.name, "folder": self.folder, "job": self.job, "overrides": list(self.overrides)}


def sweep_name(sweep_dir: Path) -> str:
    """`outputs/multirun/2026-12-06/14-30-00` -> `multirun/2026-12-06/14-30-00`:
    the sweep folder without the leading `outputs/` (or an absolute path's
    first parts), unique enough to tie the jobs together and short enough for a tag."""
    parts = [p for p in Path(sweep_dir).parts if p not in ("/", "")]
    if "outputs" in parts:
        parts = parts[parts.index("outputs") + 1:]
    return "/".join(parts[-3:])


def sweep_job() -> Optional[SweepJob]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None
    return SweepJob(name=sweep_name(Path(hydra.sweep.dir)), folder=str(hydra.sweep.dir), job=int(hydra.job.num),
                    overrides=list(hydra.overrides.task))


def task_overrides() -> List[str]:
    """This job's command-line overrides (a sweep job's own values); empty
    outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
