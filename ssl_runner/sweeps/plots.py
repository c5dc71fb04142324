"""A sweep's pictures, in its sweep folder (`sweeps/results.py` draws them
after every multirun): `heatmap.png`, the objective over a grid of two
swept keys, and `objective.png`, the objective against the job (trial)
number and against each swept key's value.

They see a sweep only as `SweepPoint`s, one per job, and are drawn like the
run folder's pictures: matplotlib's object API on the Agg canvas, written
atomically by `ssl_runner.plots.save_figure`, a failure only a warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ssl_runner.plots import PANEL, PANELS_PER_ROW

# Inches per heatmap cell, and the most cells that still get their number written in.
HEATMAP_CELL, ANNOTATED_CELLS = (1.1, 0.6), 400
# A numeric key whose positive values span more than this factor is drawn on a log axis.
LOG_AXIS_SPAN = 10.0


@dataclass(frozen=True)
class SweepPoint:
    """One job as the pictures see it."""
    number: int  # the job's (trial's) number in the sweep
    values: Tuple[Optional[str], ...]  # per swept key, the value its override gave (None: not set)
    objective: Optional[float]  # None: failed, or no value
    finished: bool  # False: failed, diverged or interrupted


def _number(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def value_order(values: Sequence[Optional[str]]) -> List[str]:
    """The distinct values of one key: numerically sorted when every value is
    a number, else in the order the sweep gave them."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    if distinct and all(_number(v) is not None for v in distinct):
        return sorted(distinct, key=lambda v: _number(v))
    return distinct


def grid(points: Sequence[SweepPoint]) -> Optional[Tuple[List[str], List[str], np.ndarray]]:
    """(values of the first key, values of the second, objective matrix with
    NaN where a job failed or none ran) for jobs over exactly two keys that
    all set both, share no pair of values and fill at least half the grid
    (a random search over two numbers is no grid: objective.png shows it);
    None otherwise."""
    if not points or any(len(p.values) != 2 or None in p.values for p in points):
        return None
    pairs = [tuple(p.values) for p in points]
    rows, columns = value_order([p.values[0] for p in points]), value_order([p.values[1] for p in points])
    if len(set(pairs)) != len(pairs) or 2 * len(pairs) < len(rows) * len(columns):
        return None
    matrix = np.full((len(rows), len(columns)), np.nan)
    for point in points:
        if point.objective is not None:
            matrix[rows.index(point.values[0]), columns.index(point.values[1])] = point.objective
    return rows, columns, matrix


def heatmap_figure(points: Sequence[SweepPoint], keys: Sequence[str], objective_key: str,
                   direction: str) -> Optional[Figure]:
    """The objective per pair of values (None unless `grid` finds a grid with
    a value); the colour scale is turned for minimize so that the best cell
    always has the same colour."""
    cells = grid(points)
    if cells is None or np.isnan(cells[2]).all():
        return None
    rows, columns, matrix = cells
    width, height = HEATMAP_CELL
    figure = Figure(figsize=(max(4.5, width * len(columns) + 2.5), max(3.0, height * len(rows) + 1.6)))
    ax = figure.add_subplot()
    cmap = colormaps["viridis_r" if direction == "minimize" else "viridis"]
    norm = Normalize(np.nanmin(matrix), np.nanmax(matrix))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto")
    figure.colorbar(image, ax=ax, label=objective_key)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    ax.set_title(f"{objective_key} ({direction})")
    if matrix.size <= ANNOTATED_CELLS:
        failed = {tuple(p.values) for p in points if not p.finished}
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                value = matrix[i, j]
                if not math.isnan(value):
                    red, green, blue, _ = cmap(norm(value))
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                    ax.text(j, i, f"{value:.4g}", ha="center", va="center", color="white" if dark else "black")
                elif (row, column) in failed:
                    ax.text(j, i, "failed", ha="center", va="center", color="tab:red")
    figure.tight_layout()
    return figure


def _positions(values: Sequence[Optional[str]]) -> Tuple[List[Optional[float]], Optional[List[str]], bool]:
    """x positions of one key's values, the category labels (None for a
    numeric key) and whether the axis is logarithmic."""
    order = value_order(values)
    numbers = [_number(v) for v in order]
    if order and None not in numbers:
        low, high = min(numbers), max(numbers)
        log_axis = low > 0 and high / low > LOG_AXIS_SPAN
        return [None if v is None else _number(v) for v in values], None, log_axis
    return [None if v is None else float(order.index(v)) for v in values], order, False


def _panel(ax, xs: Sequence[Optional[float]], points: Sequence[SweepPoint], worst: float) -> None:
    """Jobs with a value as dots at their objective, the others as red
    crosses at `worst`, beyond the worst value: counted, not hidden."""
    done = [(x, p.objective) for x, p in zip(xs, points) if x is not None and p.objective is not None]
    lost = [x for x, p in zip(xs, points) if x is not None and p.objective is None]
    if done:
        ax.scatter(*zip(*done), s=24, color="tab:blue", zorder=3)
    if lost:
        ax.scatter(lost, [worst] * len(lost), marker="x", s=36, color="tab:red", zorder=3,
                   label="failed / no value")
    ax.grid(alpha=0.3)


def objective_figure(points: Sequence[SweepPoint], keys: Sequence[str], objective_key: str,
                     direction: str) -> Optional[Figure]:
    """The objective against the job number (with the best so far) and
    against each swept key; None when no job has a value."""
    values = [p.objective for p in points if p.objective is not None]
    if not values:
        return None
    # Below the worst value (above, for minimize), so that no cross hides a dot.
    margin = 0.05 * ((max(values) - min(values)) or 1.0)
    worst = min(values) - margin if direction == "maximize" else max(values) + margin
    count = 1 + len(keys)
    across = min(count, PANELS_PER_ROW)
    down = math.ceil(count / across)
    figure = Figure(figsize=(PANEL[0] * across, PANEL[1] * down + 0.4))
    ordered = sorted(points, key=lambda p: p.number)
    ax = figure.add_subplot(down, across, 1)
    _panel(ax, [float(p.number) for p in ordered], ordered, worst)
    best: List[Tuple[float, float]] = []
    for point in ordered:
        if point.objective is not None:
            better = max if direction == "maximize" else min
            best.append((point.number, point.objective if not best else better(best[-1][1], point.objective)))
    ax.step(*zip(*best), where="post", color="tab:green", alpha=0.7, label="best so far")
    ax.legend(loc="best", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("job (trial) number")
    ax.set_ylabel(objective_key)
    for index, key in enumerate(keys):
        ax = figure.add_subplot(down, across, index + 2)
        xs, categories, log_axis = _positions([p.values[index] for p in ordered])
        _panel(ax, xs, ordered, worst)
        if categories is not None:
            ax.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
        if log_axis:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(objective_key)
    lost = sum(p.objective is None for p in points)
    figure.suptitle(f"{objective_key} ({direction}): {len(points)} jobs"
                    + (f", {lost} failed or without a value (x)" if lost else ""))
    figure.tight_layout()
    return figure

