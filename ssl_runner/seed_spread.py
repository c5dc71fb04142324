"""Seeds pooled: the runs of one recipe that differ only in their seed, as
one row of mean ± sample standard deviation with n, for every accuracy
(`pooled_table`). `report.markdown_table` and a sweep's `results.md` add it
wherever some recipe has more than one seed: one seed's figure, read alone,
says nothing of how far the next seed would land. The README's methods
table (`methods_table`) pools each method's seeds the same way.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from ssl_runner.report import (COLUMNS, OPTIONAL_COLUMNS, format_cell, load_summary, optional_figure, protocols_note,
                               run_name, run_outcome, summary_row)

POOLED_HEADING = "Seeds pooled (the runs of one recipe: mean ± sample standard deviation over n finished runs):"
# What the runs of one recipe may differ in (besides their figures).
NOT_RECIPE = ("seed", "pretrain min", "run")
FIGURES = ("kNN top-1", "random-init kNN", "kNN gain", "linear top-1", *OPTIONAL_COLUMNS)
RECIPE_COLUMNS = tuple(c for c in COLUMNS if c not in NOT_RECIPE and c not in FIGURES)


def recipe(summary: Dict[str, Any]) -> Tuple[Any, ...]:
    """What makes two runs the same recipe: every fact of the row but the
    seed, and the command line's overrides but `seed=`."""
    row = summary_row(summary)
    overrides = sorted(o for o in summary.get("overrides", []) if not o.lstrip("+").startswith("seed="))
    return (*(row[c] for c in RECIPE_COLUMNS), tuple(overrides))


def mean_std(values: Sequence[float]) -> str:
    """`mean ± sample std` (n - 1 in the denominator) to two decimals; one value alone."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def figure(summary: Dict[str, Any], column: str) -> Any:
    return summary_row(summary)[column] if column in COLUMNS else optional_figure(summary, column)


def has_repeated_seeds(summaries: Sequence[Dict[str, Any]]) -> bool:
    """Whether some recipe has more than one finished run."""
    keys = [recipe(s) for s in summaries if run_outcome(s) == "done"]
    return len(set(keys)) < len(keys)


def pooled_table(summaries: Sequence[Dict[str, Any]]) -> str:
    """One row per recipe: its facts, its overrides (but the seed), n (of the
    runs found: a failed run counts against n, not in the figures), the seeds,
    and mean ± std of each accuracy any run has."""
    groups: Dict[Tuple[Any, ...], List[Dict[str, Any]]] = {}
    for summary in summaries:
        groups.setdefault(recipe(summary), []).append(summary)
    figures = [c for c in FIGURES if any(figure(s, c) is not None for s in summaries)]
    columns = [*RECIPE_COLUMNS, "overrides", "n", "seeds", *figures]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for key, runs in groups.items():
        done = [s for s in runs if run_outcome(s) == "done"]
        cells = ["–" if v is None else str(v) for v in key[:len(RECIPE_COLUMNS)]]
        cells.append(" ".join(key[-1]).replace("|", "/") or "–")
        cells.append(str(len(done)) if len(done) == len(runs) else f"{len(done)} of {len(runs)} ({len(runs) - len(done)} failed)")
        seeds = sorted((s.get("seed") for s in done), key=lambda seed: (not isinstance(seed, int), str(seed).zfill(9)))
        cells.append(", ".join(str(seed) for seed in seeds) or "–")
        for column in figures:
            values = [float(v) for v in (figure(s, column) for s in done) if v is not None]
            cells.append(mean_std(values) if values else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


METHOD_COLUMNS = ("method", "paper", "seeds", "kNN top-1", "kNN gain", "linear top-1", "linear gain", "minutes",
                  "published (CIFAR-10)")


def methods_table(summaries: Iterable[Path], info: Mapping[str, Any]) -> str:
    """The README's methods table: every registered method (`info`: name ->
    MethodInfo, in registry order) with the figures of its finished runs
    among `summaries`, pooled over their seeds (mean ± sample std; kNN, gain
    over each run's own random-init encoder, linear, whole-run minutes) beside
    its paper's published number. A method with no run shows dashes; runs of
    one method with different recipes are refused, since a table must not pick."""
    runs: Dict[str, List[Dict[str, Any]]] = {}
    for path in summaries:
        summary = load_summary(path)
        if run_outcome(summary) != "done":
            raise ValueError(f"{run_name(summary)} did not finish ({run_outcome(summary)}); a table of "
                             "results takes finished runs only")
        same = runs.setdefault(summary.get("method"), [])
        if same and recipe(same[0]) != recipe(summary):
            raise ValueError(f"two recipes of {summary['method']} ({run_name(same[0])} and {run_name(summary)}); "
                             "pass the runs of one recipe per method")
        same.append(summary)
    lines = ["| " + " | ".join(METHOD_COLUMNS) + " |", "|" + "---|" * len(METHOD_COLUMNS)]
    for name, meta in info.items():
        these = sorted(runs.get(name, []), key=lambda s: str(s.get("seed")).zfill(9))

        def pooled(value_of) -> str:
            values = [float(v) for v in map(value_of, these) if v is not None]
            return mean_std(values) if values else "–"

        def linear_gain(summary: Dict[str, Any]) -> Any:
            linear, random_linear = summary_row(summary)["linear top-1"], optional_figure(summary, "random-init linear")
            return None if linear is None or random_linear is None else linear - random_linear

        wall = [s["wall_seconds"] / 60 for s in these if s.get("wall_seconds") is not None]
        cells = [f"`{name}`", meta.paper, ", ".join(str(s.get("seed")) for s in these) or "–",
                 pooled(lambda s: summary_row(s)["kNN top-1"]), pooled(lambda s: summary_row(s)["kNN gain"]),
                 pooled(lambda s: summary_row(s)["linear top-1"]), pooled(linear_gain),
                 format_cell(round(statistics.fmean(wall), 1) if wall else None), meta.published]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + protocols_note([s for group in runs.values() for s in group])
