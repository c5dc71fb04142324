"""`python -m ssl_runner.reproduce PRESET --methods ... --seeds ...`: run a
preset's recipes over seeds and print expected, got (last epoch, mean ± std
over the seeds), best (val-selected, where a stage records one), delta and
PASS/FAIL for each declared figure (conf/expected/<preset>.yaml, see
ssl_runner/expected.py), as markdown and CSV.

    python -m ssl_runner.reproduce smoke --methods simclr byol --seeds 0 1
    python -m ssl_runner.reproduce cifar10_cpu --methods all --seeds 0 1 2 --out docs/results/reproduce_cifar10_cpu
    python -m ssl_runner.reproduce cifar10_cpu --methods simclr:0,1,2 rotnet:0,1,2 looc --seeds 0

A method written `METHOD:S1,S2,...` runs those seeds instead of `--seeds`.

Each (method, seed) is one ordinary run, `python -m ssl_runner method=<m>
experiment=<preset> seed=<s> hydra.run.dir=<out>/<m>_seed<s>`, one after
the other; rerunning the command resumes: finished runs are skipped, an
interrupted one resumes. Overrides after `--` go to every run (the table then
says so: the expectations hold for the preset as it is). The exit status is
1 when any figure FAILs, 0 when all PASS (or have no expectation).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ssl_runner.expected import (TABLE_COLUMNS, Comparison, compare, comparison_rows, expected_file,
                                 load_expectations, markdown)
from ssl_runner.errors import UserError
from ssl_runner.run_dir import SUMMARY, cpu_model
from ssl_runner.safe_io import write_text

# The figures compared where a method declares no expectation, and recorded by --record.
DEFAULT_KEYS = ("stages.knn.top1", "stages.linear.top1", "baseline.knn_random_init.top1",
                "baseline.linear_random_init.top1")
# A recorded tolerance: a few sample standard deviations of the seeds, never
# below a floor (three seeds estimate a spread roughly). One seed measures no
# spread: its figure gets a wider, fixed tolerance, stated in the file.
TOLERANCE_STDS, TOLERANCE_FLOOR, ONE_SEED_TOLERANCE = 3.0, 1.0, 2.0


def run_folder(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}_seed{seed}"


def read_summary(run_dir: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def method_seeds(entries: Sequence[str], seeds: Sequence[int]) -> Dict[str, List[int]]:
    """`simclr` runs `seeds`; `simclr:0,1,2` runs its own."""
    chosen: Dict[str, List[int]] = {}
    for entry in entries:
        method, colon, own = entry.partition(":")
        try:
            these = [int(s) for s in own.split(",")] if colon else list(seeds)
        except ValueError:
            these = []
        if not method or not these or len(set(these)) != len(these) or method in chosen:
            raise UserError(f"`--methods {entry}` is not understood: write a method once, as METHOD (the seeds of "
                            f"--seeds) or METHOD:S1,S2,... with distinct integer seeds, e.g. simclr:0,1,2.")
        chosen[method] = these
    return chosen


def run_recipe(preset: str, method: str, seed: int, out: Path, overrides: Sequence[str]) -> Dict[str, Any]:
    """One (method, seed) run, skipped if its folder already finished; its summary
    (or a failed one, with the log's last lines, if it left none)."""
    run_dir = run_folder(out, method, seed)
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") == "done":
        print(f"{method} seed {seed}: already done in {run_dir}", file=sys.stderr)
        return summary
    command = [sys.executable, "-m", "ssl_runner", f"method={method}", f"experiment={preset}", f"seed={seed}",
               f"hydra.run.dir={run_dir}", *overrides]
    log = out / "logs" / f"{method}_seed{seed}.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
    summary = read_summary(run_dir) or {}
    if code != 0:
        tail = " ".join(log.read_text().splitlines()[-3:])
        summary = {**summary, "status": summary.get("status") if summary.get("status") not in (None, "done")
                   else "failed", "error": summary.get("error") or f"exit status {code}: {tail}",
                   "seed": seed, "method": method}
    print(f"{method} seed {seed}: {summary.get('status', 'failed')} in {time.monotonic() - start:.0f} s "
          f"(log {log})", file=sys.stderr)
    return summary


def comparisons(methods: Sequence[str], runs: Dict[str, List[Dict[str, Any]]],
                expected_path: Optional[Path]) -> List[Comparison]:
    expectations = load_expectations(expected_path) if expected_path is not None else []
    rows: List[Comparison] = []
    for method in methods:
        declared = {e.key: e for e in expectations if e.method == method}
        keys = list(declared) or [k for k in DEFAULT_KEYS
                                  if any(s.get(k.split(".")[0], {}).get(k.split(".")[1]) for s in runs[method])]
        rows += [compare(method, key, runs[method], declared.get(key)) for key in keys]
    return rows


def header(preset: str, seeds: Dict[str, List[int]], overrides: Sequence[str], expected_path: Path) -> str:
    extra = f", with the overrides `{' '.join(overrides)}` (the expectations are the preset's own)" if overrides else ""
    distinct = {tuple(s) for s in seeds.values()}
    said = (f"seeds {', '.join(map(str, distinct.pop()))}" if len(distinct) == 1
            else "seeds per method as the seeds column says")
    return (f"Reproduce `experiment={preset}`, {said}{extra}: got = last-epoch test "
            f"top-1 (%), mean ± sample std over the seeds; expected ± tolerance from `{expected_path.name}` "
            f"(conf/expected/); PASS when |delta| ≤ tolerance. Machine: {cpu_model()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.")


def publish(out: Path, target: Path, seeds: Dict[str, List[int]]) -> None:
    """The tables and the figures behind them, without the checkpoints: what
    docs/results/ keeps of a reproduction."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("reproduce.md", "reproduce.csv"):
        write_text(target / name, (out / name).read_text())
    for method, these in seeds.items():
        for seed in these:
            run_dir = run_folder(out, method, seed)
            (target / run_dir.name).mkdir(exist_ok=True)
            for name in (SUMMARY, "config.yaml"):
                if (run_dir / name).is_file():
                    write_text(target / run_dir.name / name, (run_dir / name).read_text())


def csv_text(rows: Sequence[Comparison]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TABLE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparison_rows(rows))
    return buffer.getvalue()


def recorded_expectations(preset: str, rows: Sequence[Comparison], command: str) -> str:
    """conf/expected/<preset>.yaml from measured runs: each figure's mean over
    the seeds, with a tolerance of a few standard deviations."""
    lines = [f"# What experiment={preset} gives, per method: the mean of the seeds below, measured on "
             f"{cpu_model()} ({torch.get_num_threads()} threads, torch {torch.__version__}) on "
             f"{time.strftime('%Y-%m-%d')}, with a tolerance of max({TOLERANCE_STDS:g} x the seeds' sample std, "
             f"{TOLERANCE_FLOOR:g}); a figure from one seed, which measures no spread: {ONE_SEED_TOLERANCE:g}.",
             f"# Written by: {command}",
             "source: measured", "methods:"]
    for method in dict.fromkeys(r.method for r in rows):
        lines.append(f"  {method}:")
        for r in rows:
            if r.method == method and r.got and not r.failed_runs:
                tolerance = (ONE_SEED_TOLERANCE if r.std is None
                             else max(TOLERANCE_STDS * r.std, TOLERANCE_FLOOR))
                lines.append(f"    {r.key}: {{value: {r.mean:.2f}, tolerance: {tolerance:.2f}, "
                             f"seeds: [{', '.join(map(str, r.seeds))}]}}")
    return "\n".join(lines) + "\n"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m ssl_runner.reproduce", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="an experiment preset with conf/expected/<preset>.yaml (smoke, cifar10_cpu)")
    parser.add_argument("--methods", nargs="+", default=["all"],
                        help="methods to run (default: all, every method the expectations name); "
                             "METHOD:S1,S2,... runs that method over its own seeds")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/reproduce/<preset>")
    parser.add_argument("--expected", type=Path, default=None, help="default: conf/expected/<preset>.yaml")
    parser.add_argument("--publish", type=Path, default=None,
                        help="also copy the tables and each run's summary.json and config.yaml (no checkpoints) "
                             "there, e.g. docs/results/reproduce_<preset>")
    parser.add_argument("--record", action="store_true",
                        help="write the expectations from these runs (CPU presets): mean over the seeds, "
                             f"tolerance max({TOLERANCE_STDS} std, {TOLERANCE_FLOOR})")
    args = parser.parse_args(argv)
    args.overrides = overrides
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    expected_path = args.expected or expected_file(args.preset)
    out = args.out or Path("outputs") / "reproduce" / args.preset
    try:
        declared = [] if args.record and not expected_path.is_file() else load_expectations(expected_path)
        methods = args.methods
        if methods == ["all"]:  # the methods the expectations name, else (recording) every method
            import ssl_runner.methods  # noqa: F401  (registers every method)
            from ssl_runner.methods.registry import METHOD_INFO

            methods = list(dict.fromkeys(e.method for e in declared)) or list(METHOD_INFO)
        if not methods:
            raise UserError(f"{expected_path} names no method; pass --methods.")
        seeds = method_seeds(methods, args.seeds)
        runs = {m: [run_recipe(args.preset, m, seed, out, args.overrides) for seed in these]
                for m, these in seeds.items()}
        rows = comparisons(list(seeds), runs, expected_path if declared else None)
    except UserError as err:
        print(err.paragraph(), file=sys.stderr)
        return err.exit_code
    text = f"{header(args.preset, seeds, args.overrides, expected_path)}\n\n{markdown(rows)}\n"
    write_text(out / "reproduce.md", text)
    write_text(out / "reproduce.csv", csv_text(rows))
    print(text)
    if args.publish is not None:
        publish(out, args.publish, seeds)
    if args.record:
        command = " ".join(["python -m ssl_runner.reproduce", *(sys.argv[1:] if argv is None else argv)])
        write_text(expected_path, recorded_expectations(args.preset, rows, command))
        print(f"expectations written to {expected_path}", file=sys.stderr)
        return 0 if not any(r.failed_runs for r in rows) else 1
    failed = [r for r in rows if r.verdict.startswith("FAIL")]
    if failed:
        print(f"{len(failed)} of {len(rows)} figures FAIL; tables in {out}/reproduce.md and .csv", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
