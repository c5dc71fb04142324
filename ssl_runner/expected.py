"""What a preset should give: expected figures with a tolerance, and the
comparison of a recipe's runs with them.

Each preset that the README quotes declares its expected results in one
file beside the presets, `conf/expected/<preset>.yaml`:

    source: measured           # or the paper(s) the figures come from
    measured: "..."            # where, when and with which command (measured figures)
    methods:
      simclr:
        stages.knn.top1: {value: 45.0, tolerance: 1.5}
        stages.linear.top1: {value: 91.1, tolerance: 1.0, source: "Chen et al. 2020, App. B.9"}

A key is a dotted summary.json key (the protocol is the stage's: `knn`,
`linear`, ...). For a CPU preset the value is the measured mean of several
seeds and the tolerance a few standard deviations; for a GPU recipe, the
paper's figure, its source, and a tolerance for the protocols' differences.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ssl_runner.conf_root import config_dir
from ssl_runner.errors import UserError
from ssl_runner.report import run_outcome
from ssl_runner.sweeps.objective import objective_value as summary_value



@dataclass(frozen=True)
class Expectation:
    method: str
    key: str
    value: float
    tolerance: float
    source: str


def expected_file(preset: str) -> Path:
    return Path(config_dir()) / "expected" / f"{preset}.yaml"


def load_expectations(path: Path) -> List[Expectation]:
    """Every (method, key) expectation in `path`; a malformed entry is a
    UserError naming it."""
    if not path.is_file():
        raise UserError(f"no expected results at {path}. Declare them there (conf/expected/<preset>.yaml: "
                        "methods: {<method>: {<summary key>: {value: V, tolerance: T}}}), or pass --expected FILE.")
    data = yaml.safe_load(path.read_text()) or {}
    found: List[Expectation] = []
    for method, keys in (data.get("methods") or {}).items():
        for key, entry in (keys or {}).items():
            try:
                value, tolerance = float(entry["value"]), float(entry["tolerance"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: the expectation {method}.{key} needs a number `value` and a number "
                                f"`tolerance` (found {entry!r}).") from None
            if tolerance < 0:
                raise UserError(f"{path}: the tolerance of {method}.{key} is negative ({tolerance}).")
            found.append(Expectation(method, key, value, tolerance, str(entry.get("source", data.get("source", "")))))
    return found


@dataclass
class Comparison:
    """One row of the reproduce table: a (method, key) over a recipe's seeds."""

    method: str
    key: str
    expected: Optional[float]
    tolerance: Optional[float]
    got: List[float]
    best: List[float]
    seeds: List[Any]
    failed_runs: int
    source: str

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.got) if self.got else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.got) if len(self.got) > 1 else None

    @property
    def delta(self) -> Optional[float]:
        return None if self.mean is None or self.expected is None else self.mean - self.expected

    @property
    def verdict(self) -> str:
        if self.failed_runs:
            return f"FAIL ({self.failed_runs} run(s) failed)"
        if not self.got:
            return "FAIL (no figure)"
        if self.expected is None:
            return "no expectation"
        return "PASS" if abs(self.delta) <= self.tolerance + 1e-9 else "FAIL"


def best_key(key: str) -> str:
    """Where a stage records its best-epoch figure, chosen on a validation
    split (never on test), beside its last-epoch `top1`."""
    return key.rsplit(".", 1)[0] + ".best_val_selected_top1"


def compare(method: str, key: str, summaries: Sequence[Dict[str, Any]], expectation: Optional[Expectation]) -> Comparison:
    done = [s for s in summaries if run_outcome(s) == "done"]
    got = [float(v) for v in (summary_value(s, key) for s in done) if v is not None]
    best = [float(v) for v in (summary_value(s, best_key(key)) for s in done) if v is not None]
    return Comparison(method, key, None if expectation is None else expectation.value,
                      None if expectation is None else expectation.tolerance, got, best,
                      [s.get("seed") for s in done], len(summaries) - len(done),
                      "" if expectation is None else expectation.source)


def _number(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} ± {std:.2f}" if std is not None else f"{value:.2f}"


TABLE_COLUMNS = ("method", "figure", "n", "seeds", "expected", "got (last epoch)", "best (val-selected)", "delta",
                 "verdict", "source")


def comparison_rows(rows: Sequence[Comparison]) -> List[Dict[str, str]]:
    return [{
        "method": r.method, "figure": r.key, "n": str(len(r.got)), "seeds": " ".join(str(s) for s in r.seeds),
        "expected": "–" if r.expected is None else f"{r.expected:.2f} ± {r.tolerance:.2f}",
        "got (last epoch)": _number(r.mean, r.std),
        "best (val-selected)": _number(statistics.fmean(r.best) if r.best else None),
        "delta": "–" if r.delta is None else f"{r.delta:+.2f}", "verdict": r.verdict, "source": r.source,
    } for r in rows]


def markdown(rows: Sequence[Comparison]) -> str:
    cells = comparison_rows(rows)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(c[k].replace("|", "/") for k in TABLE_COLUMNS) + " |" for c in cells]
    return "\n".join(lines)
