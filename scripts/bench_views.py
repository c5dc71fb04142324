"""Two SimCLR views per CIFAR-10 image on one CPU core: ssl-runner's batched
views against lightly's per-image transform, measured in the same process.

    SSL_RUNNER_DATA=../shared/data python scripts/bench_views.py [--images 4096] [--batch 512] [--repeats 5]

The peer is lightly's `SimCLRTransform(input_size=32, gaussian_blur=0.0,
cj_strength=0.5)` applied to each PIL image (what a DataLoader worker does);
ours is the `views=simclr_cifar` recipe (the same family: crop 0.08-1, flip
0.5, colour jitter 0.8 at strength 0.5, grayscale 0.2, no blur) on uint8
batches, as `data.views_on=device` runs it on a CPU. Both produce normalised
float32 views. The process is pinned to one core with one torch thread.

Each side is measured --repeats times, interleaved (ours, lightly, ours per
image, ours, ...), each time in a fresh process (our batches keep freed
memory in the heap, a process-wide setting the peer must not inherit).
Prints the machine, each side's median and range in images/s (two views
each), the ratios of medians and, on the last line, ratio=R (ours batched /
lightly, medians; higher is better).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from bench_common import rate
from PIL import Image


def cifar_files(n: int) -> list[Path]:
    root = Path(os.environ.get("SSL_RUNNER_DATA", "../shared/data")) / "cifar10" / "train"
    if not root.is_dir():
        raise SystemExit(f"CIFAR-10 image folder not found at {root}; set SSL_RUNNER_DATA")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    step = max(1, len(files) // n)
    return files[::step][:n]


def measure(side: str, images: int, batch: int) -> float:
    """One side's images/s (two views each), pinned to one core with one torch thread."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)

    from ssl_runner.config import CIFAR10_MEAN, CIFAR10_STD
    from ssl_runner.runtime import keep_freed_memory
    from ssl_runner.views.recipe import ViewRecipe

    files = cifar_files(images)
    pil = [Image.open(f).convert("RGB") for f in files]
    if side == "lightly":
        from lightly.transforms import SimCLRTransform

        peer = SimCLRTransform(input_size=32, gaussian_blur=0.0, cj_strength=0.5,
                               normalize={"mean": CIFAR10_MEAN, "std": CIFAR10_STD})
        sample = peer(pil[0])
        assert len(sample) == 2 and tuple(sample[0].shape) == (3, 32, 32)
        return rate(lambda: [peer(image) for image in pil[:1024]], 1024)
    uint8 = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).contiguous()
    recipe = ViewRecipe.simclr(size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_views=2)
    if side == "ours_per_image":  # views_on=cpu: one image at a time, as a DataLoader worker
        return rate(lambda: [recipe.views(uint8[i:i + 1]) for i in range(256)], 256)
    keep_freed_memory()  # what the runner does (trainer.keep_freed_memory)
    batches = uint8.split(batch)
    assert tuple(recipe(batches[0]).shape) == (len(batches[0]), 3, 32, 32)
    return rate(lambda: [recipe.views(b) for b in batches], len(uint8))  # as BaseMethod.make_views


SIDES = {"ours": "ssl-runner, batches of --batch (views_on=device on a CPU)",
         "lightly": "lightly SimCLRTransform, per PIL image",
         "ours_per_image": "ssl-runner, per image (views_on=cpu)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each side, interleaved")
    parser.add_argument("--side", choices=sorted(SIDES), help="one measurement, printed as JSON (internal)")
    args = parser.parse_args()
    if args.side:
        print(json.dumps({"images_per_second": measure(args.side, args.images, args.batch)}))
        return

    from bench_common import in_fresh_process, interleaved, machine_line, report

    print(f"{machine_line()}; each measurement pinned to 1 core, 1 torch thread, in a fresh process")
    print(f"{args.images} CIFAR-10 images, two SimCLR views each; {args.repeats} measurements per side, interleaved")
    for side, what in SIDES.items():
        print(f"  {side}: {what}")
    common = ["--images", str(args.images), "--batch", str(args.batch)]
    results = interleaved({side: in_fresh_process(__file__, [*common, "--side", side]) for side in SIDES},
                          args.repeats)
    ratio = report(results, "ours", "lightly")
    report({k: results[k] for k in ("ours_per_image", "lightly")}, "ours_per_image", "lightly")
    print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
