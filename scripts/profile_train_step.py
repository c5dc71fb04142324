"""Where a training step's time goes, on each side of scripts/bench_train.py
(ours and lightly's SimCLR, same model, batch, optimizer and precision), and
the ceiling this puts on the throughput ratio at equal model (issue 20, part 4).

    SSL_RUNNER_DATA=../shared/data python scripts/profile_train_step.py [--precision 32-true bf16-mixed] [--batch 256] [--steps 2]

Each side runs in a fresh process (as bench_train.py measures it), with
lightly's loader at 0 workers, and is profiled (torch.profiler, CPU) over
`--steps` optimizer steps after `--warmup`. A step's wall time is split into
the convolutions (forward and backward, oneDNN on a CPU), batch norm (forward
and backward) and the rest (ReLU, the loss, the head, the optimizer, autocast's
casts); the time between two steps (loading the batch and, for ours, making
the views after the transfer) is measured apart.

Both sides run the same convolutions through the same library, so ours can
never take less than its own convolutions' time per batch. The ceiling
printed is the peer's time per batch (step and loading) over our
convolutions' time: the ratio ours would reach if everything else took no
time at all. A target above the ceiling cannot be met at equal model on this
machine by anything but faster convolutions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

GROUPS = {"convolutions": "convolution", "batch norm": "batch_norm"}


def grouped_seconds(self_seconds_by_op: dict[str, float], step_seconds: float) -> dict[str, float]:
    """A step's wall seconds split by op name: each group holds the self time of
    the ops whose name contains its key ("aten::convolution_backward",
    "aten::mkldnn_convolution", ...); "the rest" is the step's remainder, so
    the groups add up to the step."""
    grouped = {group: sum(seconds for op, seconds in self_seconds_by_op.items() if key in op)
               for group, key in GROUPS.items()}
    grouped["the rest"] = step_seconds - sum(grouped.values())
    return grouped


class StepProfile(Callback):
    """Profiles steps warmup .. warmup + steps - 1 and times the gaps before them."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.step_seconds, self.between_seconds = 0.0, 0.0
        self.profiler, self.last_end, self.started = None, None, 0.0

    def _timed(self, batch_idx: int) -> bool:
        return self.warmup <= batch_idx < self.warmup + self.steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._timed(batch_idx):
            return
        from torch.profiler import ProfilerActivity, profile

        self.between_seconds += time.perf_counter() - self.last_end
        if self.profiler is None:
            self.profiler = profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._timed(batch_idx):
            self.step_seconds += time.perf_counter() - self.started
            if batch_idx == self.warmup + self.steps - 1:
                self.profiler.__exit__(None, None, None)
        self.last_end = time.perf_counter()

    def figures(self) -> dict:
        # Self CPU time is the calling thread's: intra-op threads work inside it.
        by_op = {event.key: event.self_cpu_time_total / 1e6 for event in self.profiler.key_averages()}
        per_step = {group: seconds / self.steps
                    for group, seconds in grouped_seconds(by_op, self.step_seconds).items()}
        return {"step": self.step_seconds / self.steps, **per_step, "between steps": self.between_seconds / self.steps}


def ceiling(ours: dict, peer: dict) -> dict:
    """The throughput ratio now (time per batch, peer over ours) and the most
    it could be if everything in ours but its convolutions took no time."""
    per_batch = {name: side["step"] + side["between steps"] for name, side in (("ours", ours), ("peer", peer))}
    return {"ratio_now": per_batch["peer"] / per_batch["ours"], "ceiling": per_batch["peer"] / ours["convolutions"]}


def profile_in_fresh_process(args: argparse.Namespace, side: str, precision: str) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--precision", precision, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--backbone", args.backbone]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import bench_train  # beside this script: the two sides exactly as the benchmark builds them

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--backbone", choices=sorted(bench_train.BACKBONES), default="resnet18")
    parser.add_argument("--side", choices=["ours", "peer"], help="profile one side here and print its JSON line")
    args = parser.parse_args()
    data_root = Path(os.environ.get("SSL_RUNNER_DATA", "../shared/data")).resolve()
    if args.side:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        profiler = StepProfile(args.warmup, args.steps)
        measure = bench_train.ours_throughput if args.side == "ours" else bench_train.peer_throughput
        if args.side == "ours":
            measure(data_root, args.batch, args.warmup, args.steps, args.precision[0],
                    backbone_name=args.backbone, callbacks=(profiler,))
        else:
            measure(data_root, args.batch, 0, args.warmup, args.steps, args.precision[0],
                    backbone_name=args.backbone, callbacks=(profiler,))
        print(json.dumps(profiler.figures()))
        return

    from bench_common import machine_line

    print(f"{machine_line()}; {args.backbone}, batch {args.batch} (x2 views), {args.steps} profiled steps "
          f"after {args.warmup}, each side in a fresh process, lightly at 0 workers")
    for precision in args.precision:
        sides = {side: profile_in_fresh_process(args, side, precision) for side in ("ours", "peer")}
        print(f"\n[{precision}] seconds per step")
        columns = list(sides["ours"])
        print("| side | " + " | ".join(columns) + " | convolutions' share |")
        print("|---|" + "---|" * (len(columns) + 1))
        for name, figures in sides.items():
            share = figures["convolutions"] / (figures["step"] + figures["between steps"])
            print(f"| {name} | " + " | ".join(f"{figures[c]:.3f}" for c in columns) + f" | {share:.0%} |")
        bound = ceiling(sides["ours"], sides["peer"])
        print(f"ratio now (time per batch, lightly / ours): {bound['ratio_now']:.2f}; ceiling at equal model "
              f"(everything in ours but its convolutions free): {bound['ceiling']:.2f}")


if __name__ == "__main__":
    main()
