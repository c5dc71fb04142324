"""Two SimCLR views per image file, from a folder of real photographs of
ImageNet-like size (300-500 px JPEGs), on one CPU core: what a DataLoader
worker does for `data=imagefolder` (`views_on=cpu`), ours against lightly's.

    python scripts/bench_imagefolder.py [--folder DIR] [--files 300] [--repeats 5] [--device cuda]

The folder (made once, at --folder or in a temporary folder): `--files`
JPEGs cut from the colour and grey photographs that scikit-image and
scikit-learn ship (astronaut, chelsea, coffee, rocket, Hubble deep field,
immunohistochemistry, retina, camera, coins, moon; china, flower): a random
crop of 40-100 % of each side, the longer side resized to 300-500 px, JPEG
quality 75-95, seeded. Needs scikit-image (`pip install -e ".[bench]"`;
without it, scikit-learn's two photographs only, and the header says so).

Sides, at 32 px and at 224 px:

- lightly: `SimCLRTransform` (32 px: `gaussian_blur=0.0, cj_strength=0.5`,
  as `views=simclr_cifar`; 224 px: its defaults, SimCLR's ImageNet recipe,
  as `views=simclr_imagenet`) on `Image.open(path).convert("RGB")`, per file;
- ours: `loaders.FileViewBatches`, batches of 64 files, as the runner's
  workers make them (data/crops.py: each JPEG decoded at the size its crops
  need, the rest of the recipe batched on uint8 crops);
- ours_per_item: the per-file path the runner had before (the whole file
  decoded, then the recipe on it), for reference;
- with `--device D`, ours_device: `views_on=device` (data/encoded.py), the
  files' bytes read on the host, then decoded in one batched call, cropped
  and made into views on D (on a CUDA device: nvJPEG; scripts/gpu_check.py
  runs it there).

Each measurement in a fresh process pinned to one core with one torch
thread, the sides interleaved --repeats times. Our sides keep freed memory
in the heap (`runtime.keep_freed_memory`), as the runner's DataLoader
workers do: they fork from the process that applied
`trainer.keep_freed_memory` (on by default), and glibc's settings go with
them. The peer runs as its users run it; prints medians, ranges and
ratios of medians, and on the last line ratio=R (ours / lightly at 224 px).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from bench_common import rate
from PIL import Image

SIZES = (32, 224)
SIDES = ("ours", "lightly", "ours_per_item")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                  "camera", "coins", "moon")
BATCH = 64


def photographs() -> dict:
    from sklearn.datasets import load_sample_images

    photos = dict(zip(("china", "flower"), load_sample_images().images))
    try:
        import skimage.data
    except ImportError:
        return photos
    photos.update({name: getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS})
    return {name: np.stack([p] * 3, axis=-1) if p.ndim == 2 else p[..., :3] for name, p in photos.items()}


def make_folder(root: Path, files: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = photographs()
    names = sorted(photos)
    for i in range(files):
        name = names[i % len(names)]
        photo = photos[name]
        height, width = photo.shape[:2]
        ch, cw = (int(side * rng.uniform(0.4, 1.0)) for side in (height, width))
        top, left = rng.integers(0, height - ch + 1), rng.integers(0, width - cw + 1)
        image = Image.fromarray(photo[top:top + ch, left:left + cw])
        longer = int(rng.integers(300, 501))
        scale = longer / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        image.save(root / "train" / name / f"{i:04d}.jpg", quality=int(rng.integers(75, 96)))


def measure(side: str, size: int, folder: Path, device: str = "cpu", min_seconds: float = 3.0) -> float:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    if side != "lightly":
        from ssl_runner.runtime import keep_freed_memory

        keep_freed_memory()  # what the runner's forked workers inherit (trainer.keep_freed_memory)
    from omegaconf import OmegaConf

    from ssl_runner.config import DataConfig
    from ssl_runner.data.datasets import load_split
    from ssl_runner.data.loaders import FileViewBatches, PretrainDataset
    from ssl_runner.views.recipe import ViewRecipe

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    cfg = OmegaConf.structured(DataConfig(name="imagefolder", root=str(folder), image_size=size, in_memory=False,
                                          views_on="cpu", mean=mean, std=std))
    images = load_split(cfg, "train", seed=0)
    paths = images.paths
    assert paths is not None
    if side == "lightly":
        from lightly.transforms import SimCLRTransform

        small = dict(gaussian_blur=0.0, cj_strength=0.5) if size == 32 else {}
        transform = SimCLRTransform(input_size=size, normalize={"mean": mean, "std": std}, **small)
        return rate(lambda: [transform(Image.open(p).convert("RGB")) for p in paths], len(paths), min_seconds)
    recipe = (ViewRecipe.simclr(size=size, mean=mean, std=std, jitter_strength=0.5, num_views=2) if size == 32 else
              ViewRecipe.simclr(size=size, mean=mean, std=std, jitter_strength=1.0, blur_p=0.5, num_views=2))
    if side == "ours_per_item":
        per_item = PretrainDataset(images, recipe)
        return rate(lambda: [per_item[i] for i in range(len(paths))], len(paths), min_seconds)
    starts = range(0, len(paths) - BATCH + 1, BATCH)
    if side == "ours_device":
        from ssl_runner.data.encoded import read_files, views_of_encoded

        target = torch.device(device)

        def on_device() -> None:
            for s in starts:
                views_of_encoded(read_files(paths[s:s + BATCH]), recipe, target)
            if target.type == "cuda":
                torch.cuda.synchronize()

        return rate(on_device, len(starts) * BATCH, min_seconds)
    batches = FileViewBatches(images, recipe)
    return rate(lambda: [batches.__getitems__(list(range(s, s + BATCH))) for s in starts], len(starts) * BATCH,
                min_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="the photographs' folder (made there if missing)")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each side, interleaved")
    parser.add_argument("--device", help="also measure views_on=device on this device (cuda, cpu)")
    parser.add_argument("--side", choices=[*SIDES, "ours_device"], help="one measurement, printed as JSON (internal)")
    parser.add_argument("--size", type=int, default=224, help="with --side: the views' size")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="with --side: seconds timed after a warm-up")
    args = parser.parse_args()
    if args.side:
        print(json.dumps({"images_per_second": measure(args.side, args.size, args.folder, args.device or "cpu",
                                                       args.min_seconds)}))
        return

    from bench_common import in_fresh_process, interleaved, machine_line, report

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "photos"
        if not (folder / "train").is_dir():
            make_folder(folder, args.files)
        files = sorted((folder / "train").rglob("*.jpg"))
        sizes = [Image.open(f).size for f in files]
        print(f"{machine_line()}; each measurement pinned to 1 core, 1 torch thread, in a fresh process")
        print(f"{len(files)} JPEGs in {folder}, {min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px on the "
              f"longer side; two SimCLR views each; {args.repeats} measurements per side, interleaved")
        ratio = 0.0
        for size in SIZES:
            print(f"[{size} px views]")
            common = ["--folder", str(folder), "--size", str(size)]
            sides = {side: in_fresh_process(__file__, [*common, "--side", side]) for side in SIDES}
            if args.device:
                sides["ours_device"] = in_fresh_process(__file__, [*common, "--side", "ours_device", "--device",
                                                                   args.device])
            results = interleaved(sides, args.repeats)
            ratio = report(results, "ours", "lightly")
            report({k: results[k] for k in ("ours_per_item", "lightly")}, "ours_per_item", "lightly")
            if args.device:
                report({k: results[k] for k in ("ours_device", "lightly")}, "ours_device", "lightly")
        print(f"ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
