"""Two SimCLR views per CIFAR-10 image on one CPU core: ssl-runner's batched
views against lightly's per-image transform, measured in the same process.

    SSL_RUNNER_DATA=../shared/data python scripts/bench_views.py [--images 4096] [--batch 512]

The peer is lightly's `SimCLRTransform(input_size=32, gaussian_blur=0.0,
cj_strength=0.5)` applied to each PIL image (what a DataLoader worker does);
ours is the `views=simclr_cifar` recipe (the same family: crop 0.08-1, flip
0.5, colour jitter 0.8 at strength 0.5, grayscale 0.2, no blur) on uint8
batches, as `data.views_on=device` runs it on a CPU. Both produce normalised
float32 views. The process is pinned to one core with one torch thread.

Prints images/s (two views each) for each and, on the last line,
ratio=R (ours / lightly; higher is better).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def cifar_files(n: int) -> list[Path]:
    root = Path(os.environ.get("SSL_RUNNER_DATA", "../shared/data")) / "cifar10" / "train"
    if not root.is_dir():
        raise SystemExit(f"CIFAR-10 image folder not found at {root}; set SSL_RUNNER_DATA")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    step = max(1, len(files) // n)
    return files[::step][:n]


def rate(fn, items: int, min_seconds: float = 3.0) -> float:
    """Items per second of fn() (which handles `items` items), after one warm-up call."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)

    from lightly.transforms import SimCLRTransform

    from ssl_runner.config import CIFAR10_MEAN, CIFAR10_STD
    from ssl_runner.runtime import keep_freed_memory
    from ssl_runner.views.recipe import ViewRecipe

    files = cifar_files(args.images)
    pil = [Image.open(f).convert("RGB") for f in files]
    uint8 = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).contiguous()
    print(f"{len(pil)} CIFAR-10 images, {platform.processor() or platform.machine()}, 1 core, 1 torch thread, "
          f"torch {torch.__version__}")

    peer = SimCLRTransform(input_size=32, gaussian_blur=0.0, cj_strength=0.5,
                           normalize={"mean": CIFAR10_MEAN, "std": CIFAR10_STD})
    sample = peer(pil[0])
    assert len(sample) == 2 and tuple(sample[0].shape) == (3, 32, 32)

    def lightly_all() -> None:
        for image in pil[:1024]:
            peer(image)

    ours_recipe = ViewRecipe.simclr(size=32, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_views=2)
    batches = uint8.split(args.batch)
    assert tuple(ours_recipe(batches[0]).shape) == (len(batches[0]), 3, 32, 32)

    def ours_all() -> None:
        for batch in batches:
            ours_recipe.views(batch)  # as BaseMethod.make_views

    def ours_per_image() -> None:
        for i in range(256):
            ours_recipe.views(uint8[i:i + 1])

    lightly_rate = rate(lightly_all, 1024)
    per_image_rate = rate(ours_per_image, 256)
    plain_heap_rate = rate(ours_all, len(uint8))
    allocator = keep_freed_memory()  # what the runner does (trainer.keep_freed_memory)
    ours_rate = rate(ours_all, len(uint8))
    print(f"lightly SimCLRTransform, per image (PIL):            {lightly_rate:9.0f} images/s")
    print(f"ssl-runner views, per image (views_on=cpu):          {per_image_rate:9.0f} images/s")
    print(f"ssl-runner views, batches of {args.batch}, glibc heap as is:   {plain_heap_rate:9.0f} images/s")
    print(f"ssl-runner views, batches of {args.batch}, heap kept{' ' if allocator else ' (n/a)'}:        "
          f"{ours_rate:9.0f} images/s")
    print(f"ratio={ours_rate / lightly_rate:.2f}")


if __name__ == "__main__":
    main()
