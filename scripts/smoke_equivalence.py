"""Behaviour kept across a refactoring: every method's smoke figures, before and after.

    # in a checkout of the old code, then of the new (same machine):
    SSL_RUNNER_DATA=../shared/data python scripts/smoke_equivalence.py run OUT_DIR
    python scripts/smoke_equivalence.py compare OLD_DIR NEW_DIR

`run` runs `experiment=smoke` at seed 0 for every method under conf/method/,
one `trainer=ddp_cpu` smoke run (SimCLR) and one resumed run (SimCLR, killed
with SIGKILL once its first pretraining checkpoint exists, then rerun), each
in OUT_DIR/<case>, with the code of the current directory. About 6 minutes
on 2 CPU cores. `compare` prints, per case, every loss and accuracy of the two
summaries side by side and exits 1 if any differs. Timings, paths and the
hardware line are not compared (they differ between any two runs).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

# Keys that describe the attempt, not its result.
NOT_COMPARED = {"seconds", "wall_seconds", "seconds_to_first_step", "resumed_from", "run_dir", "run", "hardware",
                "checkpoint", "encoder_checkpoint", "started", "finished", "artifacts", "plots"}


HEADLINE = {"pretrain loss": "stages.pretrain.loss", "kNN": "stages.knn.top1", "linear": "stages.linear.top1",
            "random-init kNN": "baseline.knn_random_init.top1"}


def cases() -> List[Tuple[str, List[str], Optional[str]]]:
    """(name, CLI arguments, file whose appearance triggers a SIGKILL before the rerun)."""
    methods = sorted(p.stem for p in Path("conf/method").glob("*.yaml"))
    out = [(m, [f"method={m}", "experiment=smoke"], None) for m in methods]
    out.append(("simclr_ddp_cpu", ["method=simclr", "experiment=smoke", "trainer=ddp_cpu"], None))
    out.append(("simclr_resumed", ["method=simclr", "experiment=smoke"], "pretrain/checkpoints/last.ckpt"))
    return out


def cli(args: List[str], run_dir: Path, kill_when: Optional[str] = None) -> int:
    env = {**os.environ, "CI": "true"}
    cmd = [sys.executable, "-m", "ssl_runner", *args, "seed=0", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if kill_when:
        while proc.poll() is None and not (run_dir / kill_when).exists():
            time.sleep(0.002)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            print(f"  killed once {kill_when} existed; rerunning", flush=True)
            return cli(args, run_dir)
    _, err = proc.communicate()
    if proc.returncode:
        print(err[-3000:], file=sys.stderr)
    return proc.returncode


def run(out: Path, only: List[str]) -> None:
    failed = []
    for name, args, kill_when in cases():
        if only and name not in only:
            continue
        start = time.time()
        code = cli(args, out / name, kill_when)
        print(f"{name}: exit {code} in {time.time() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def leaves(record: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(record, dict):
        for key, value in record.items():
            if key not in NOT_COMPARED:
                yield from leaves(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(record, (int, float)) and not isinstance(record, bool):
        yield prefix, record


def compare(old: Path, new: Path) -> None:
    differ = 0
    for name, _, _ in cases():
        a_path, b_path = old / name / "summary.json", new / name / "summary.json"
        if not (a_path.exists() and b_path.exists()):
            print(f"{name}: MISSING ({'old' if not a_path.exists() else 'new'})")
            differ += 1
            continue
        a = dict(leaves({k: v for k, v in json.loads(a_path.read_text()).items() if k in ("stages", "baseline")}))
        b = dict(leaves({k: v for k, v in json.loads(b_path.read_text()).items() if k in ("stages", "baseline")}))
        keys = sorted(set(a) | set(b))
        bad = [k for k in keys if a.get(k) != b.get(k)]
        # A few headline figures of the old run, to show what was compared.
        shown = ", ".join(f"{label} {a[key]}" for label, key in HEADLINE.items() if key in a)
        print(f"{name}: {'identical' if not bad else 'DIFFERENT'}, {len(keys)} figures ({shown})")
        for k in bad:
            print(f"    {k}: {a.get(k)} -> {b.get(k)}")
        differ += bool(bad)
    print(f"{len(cases()) - differ} of {len(cases())} cases identical")
    sys.exit(1 if differ else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--only", nargs="*", default=[])
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.out.resolve(), args.only)
    else:
        compare(args.old, args.new)


if __name__ == "__main__":
    main()
