"""What a sweep found, after every multirun (`SweepResultsTable`, the Hydra
callback in conf/config.yaml): in the sweep folder, `results.md` and
`results.csv`, one row per job with a column per swept key, the objective,
the accuracies and their random-init baselines, the status (with the reason
of a job that did not finish), the wall time and the run folder, best
objective first; and the pictures of `sweeps/plots.py` (`heatmap.png` for a
grid over two keys, `objective.png`).

Everything comes from the jobs' `summary.json` (the rows' figures through
`report.summary_row`); the swept keys from each job's `overrides` and the
master config's `hydra.sweeper.params`.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl_runner.report import (OPTIONAL_COLUMNS, find_summaries, format_cell, load_summary, optional_figure,
                               run_name, run_outcome, summary_row)
from ssl_runner.safe_io import write_text
from ssl_runner.seed_spread import POOLED_HEADING, has_repeated_seeds, pooled_table

if TYPE_CHECKING:
    from ssl_runner.sweeps.plots import SweepPoint

# Columns that name the job, shown before the swept keys (a swept key with the same name is shown there).
IDENTITY_COLUMNS = ("method", "backbone")
# summary_row's figures a sweep shows, then OPTIONAL_COLUMNS' (each only when some job has it).
FIGURE_COLUMNS = ("kNN top-1", "random-init kNN", "linear top-1")
OBJECTIVE, STATUS, WALL, RUN = "objective", "status", "wall s", "run"
# The value shown for a key that a job's overrides do not set (`~key` deletes it).
DELETED = "~"
PICTURES = ("heatmap.png", "objective.png")


@dataclass(frozen=True)
class JobResult:
    summary: Dict[str, Any]
    number: int  # the job's number in the sweep (its trial number for Optuna)
    overrides: Dict[str, str]  # key -> value, as the job's command line gave them
    objective: Optional[float]  # None: the job failed, or its summary predates the objective
    outcome: str  # report.run_outcome: "done", or the status and the reason


@dataclass(frozen=True)
class SweepResults:
    jobs: List[JobResult]  # in job order
    keys: List[str]  # the swept keys, in the order they first appear
    objective_key: Optional[str]  # None: no job's summary records an objective
    direction: str

    def ranked(self) -> List[JobResult]:
        """Best objective first; jobs without a value last, in job order (sorted() is stable)."""
        sign = -1.0 if self.direction == "maximize" else 1.0
        return sorted(self.jobs, key=lambda j: (j.objective is None, sign * (j.objective or 0.0)))

    def points(self) -> List[SweepPoint]:
        from ssl_runner.sweeps.plots import SweepPoint  # matplotlib only when drawing: see draw_pictures

        return [SweepPoint(j.number, tuple(j.overrides.get(k) for k in self.keys), j.objective, j.outcome == "done")
                for j in self.jobs]


def parse_override(text: str) -> Tuple[str, str]:
    """`key=value`, `+key=value`, `++key=value` -> (key, value); `~key` -> (key, "~")."""
    key, _, value = text.partition("=")
    if key.startswith("~"):
        return key[1:], DELETED
    return key.lstrip("+"), value


def job_number(summary: Dict[str, Any], index: int) -> int:
    """The sweep's job number (`sweep.job`; older summaries: the `<n>_` that
    starts Hydra's job folder name), else the position among the summaries."""
    job = (summary.get("sweep") or {}).get("job")
    if isinstance(job, int):
        return job
    numbered = re.match(r"(\d+)_", run_name(summary))
    return int(numbered.group(1)) if numbered else index


def _objective(summary: Dict[str, Any]) -> Optional[float]:
    value = (summary.get("objective") or {}).get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def swept_keys(jobs: Sequence[JobResult], declared: Sequence[str]) -> List[str]:
    """Override keys whose value differs between jobs (absent counts as a
    value), and the keys the sweeper declares (so a one-job sweep shows them)."""
    seen = list(dict.fromkeys([k for job in jobs for k in job.overrides] + list(declared)))
    return [k for k in seen if k in declared or len({job.overrides.get(k) for job in jobs}) > 1]


def load_sweep(sweep_dir: Path, config: DictConfig) -> Optional[SweepResults]:
    """The jobs below `sweep_dir` in job order, with what the sweep varied and
    which way its objective is better; None when no job left a summary."""
    summaries = [load_summary(p) for p in find_summaries([sweep_dir])]
    if not summaries:
        return None
    jobs = sorted((JobResult(s, job_number(s, i), dict(parse_override(o) for o in s.get("overrides") or []),
                             _objective(s), run_outcome(s)) for i, s in enumerate(summaries)),
                  key=lambda j: (j.number, run_name(j.summary)))
    recorded = [s["objective"] for s in summaries if isinstance(s.get("objective"), dict)]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    declared = [parse_override(str(k))[0] for k in params]
    direction = next((o["direction"] for o in recorded if o.get("direction")), None)
    return SweepResults(jobs=jobs, keys=swept_keys(jobs, declared),
                        objective_key=next((o["key"] for o in recorded if o.get("key")), None),
                        direction=direction or OmegaConf.select(config, "objective.direction", default="maximize"))


def table(sweep: SweepResults) -> Tuple[List[str], List[Dict[str, Any]]]:
    """The columns and, best objective first, one row per job of raw values
    (None where a job has none)."""
    rows = []
    for job in sweep.ranked():
        figures = summary_row(job.summary)
        row = {c: figures[c] for c in (*IDENTITY_COLUMNS, *FIGURE_COLUMNS)}
        row.update({c: optional_figure(job.summary, c) for c in OPTIONAL_COLUMNS})
        row.update({k: job.overrides.get(k) for k in sweep.keys if k not in IDENTITY_COLUMNS})
        row.update({OBJECTIVE: job.objective, STATUS: job.outcome, WALL: job.summary.get("wall_seconds"),
                    RUN: run_name(job.summary)})
        rows.append(row)
    figures = [c for c in (*FIGURE_COLUMNS, *OPTIONAL_COLUMNS) if any(row[c] is not None for row in rows)]
    columns = [*IDENTITY_COLUMNS, *(k for k in sweep.keys if k not in IDENTITY_COLUMNS),
               *([OBJECTIVE] if sweep.objective_key else []), *figures, STATUS, WALL, RUN]
    return columns, [{c: row[c] for c in columns} for row in rows]


def _markdown_cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if column == OBJECTIVE:
        return f"{value:.4g}"  # any scale: a top-1 in percent or a loss
    if column == WALL:
        return f"{value:.0f}"
    if isinstance(value, str) and re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?|-?\d\.\d{5,}e-?\d+", value):
        return f"{float(value):.4g}"  # an Optuna sample; results.csv keeps every digit
    return format_cell(value).replace("|", "/")


def markdown(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(c, row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    """The same table with the values as stored (numbers unrounded, empty where missing)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if row[c] is None else row[c] for c in columns] for row in rows])
    return buffer.getvalue()


def draw_pictures(sweep_dir: Path, sweep: SweepResults) -> List[str]:
    """heatmap.png and objective.png, those that apply; the names of those drawn."""
    # Imported here: the callback is built at the start of every run, a single
    # run included; only a sweep's end pays for matplotlib.
    from ssl_runner.plots import save_figure
    from ssl_runner.sweeps.plots import heatmap_figure, objective_figure

    if sweep.objective_key is None:
        return []
    points, key = sweep.points(), sweep.objective_key
    drawn = []
    if len(sweep.keys) == 2:
        drawn += save_figure(sweep_dir, "heatmap.png", lambda: heatmap_figure(points, sweep.keys, key, sweep.direction))
    return drawn + save_figure(sweep_dir, "objective.png",
                               lambda: objective_figure(points, sweep.keys, key, sweep.direction))


class SweepResultsTable(Callback):
    """Hydra callback (conf/config.yaml): after a multirun, results.md,
    results.csv and the pictures in the sweep folder, and the table printed.
    If any job did not finish, the sweep then exits with the first such job's
    exit status (job.py records it in the job's summary)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep = load_sweep(sweep_dir, config)
        if sweep is None:
            return
        columns, rows = table(sweep)
        text = markdown(columns, rows)
        order = (f"sorted by the objective, `{sweep.objective_key}` ({sweep.direction}), best first; "
                 "jobs without a value last" if sweep.objective_key else "in job order")
        summaries = [job.summary for job in sweep.jobs]
        pooled = (f"\n{POOLED_HEADING}\n\n{pooled_table(summaries)}\n" if has_repeated_seeds(summaries) else "")
        write_text(sweep_dir / "results.md",
                   "Generated from the summary.json of each job below this folder (last-epoch test top-1, %; "
                   f"wall time in seconds), {order}.\n\n{text}\n{pooled}")
        write_text(sweep_dir / "results.csv", csv_text(columns, rows))
        for name in PICTURES:  # an earlier sweep's in this folder: the pictures show the sweep results.csv lists
            (sweep_dir / name).unlink(missing_ok=True)
        # Always (pipeline.plots is about each job's pictures): two figures per sweep, about a second.
        pictures = draw_pictures(sweep_dir, sweep)
        written = ", ".join(["results.md", "results.csv", *pictures])
        print(f"\n{text}\n\n(written to {sweep_dir}: {written})")
        failed = [job for job in sweep.jobs if job.outcome != "done"]
        if failed:
            print(f"error: {len(failed)} of {len(sweep.jobs)} jobs did not finish: "
                  + "; ".join(f"{run_name(job.summary)} {job.outcome}" for job in failed), file=sys.stderr)
            sys.exit(int(failed[0].summary.get("exit_code") or 1))
