"""End-to-end SimCLR pretraining throughput on this machine's CPU: ssl-runner
against a lightly-based Lightning SimCLR, same model, batch, optimizer and
precision, each measured in a fresh process (as each is run by its users).

    SSL_RUNNER_DATA=../shared/data python scripts/bench_train.py [--batch 256] [--steps 4] [--warmup 2]

Both sides: the CIFAR ResNet-18 (3x3 stem, no max-pool) from
`ssl_runner.models.backbones`, the projection head Linear(512, 512)-BN-ReLU-
Linear(512, 128), NT-Xent at temperature 0.5, SGD (lr 0.06, momentum 0.9,
weight decay 5e-4), fp32, batch `--batch` images (two views each), a
Lightning `Trainer` on the CPU with every core, no logger or checkpoint.

- ssl-runner: `method=simclr` as the runner builds it (in-memory uint8
  images, views made batched after the transfer, channels-last, both views
  through the backbone as one batch, glibc heap kept).
- peer: lightly's documented recipe: `SimCLRTransform(input_size=32,
  gaussian_blur=0.0, cj_strength=0.5)` on PIL images decoded per item
  (torchvision `ImageFolder`) in DataLoader workers, lightly's `NTXentLoss`,
  one backbone call per view. Measured with 0 and 2 workers; the faster
  counts.

Throughput is steady state: images/s over `--steps` optimizer steps after
`--warmup` steps, data loading included. The last line is ratio=R (ours /
the faster peer; higher is better). Also prints, for
`python -m ssl_runner method=simclr experiment=smoke`, the seconds from process
start to the first optimizer step (second of two runs, so the OS file cache
is warm) and the run's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parent.parent


class Throughput(Callback):
    """Images per second between the end of step `warmup` and the end of step `warmup + steps`."""

    def __init__(self, warmup: int, steps: int, batch: int) -> None:
        self.warmup, self.steps, self.batch = warmup, steps, batch
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        elif batch_idx == self.warmup + self.steps - 1:
            self.end = time.perf_counter()

    @property
    def images_per_second(self) -> float:
        return self.steps * self.batch / (self.end - self.start)


def fit(module: L.LightningModule, loader, warmup: int, steps: int, batch: int, precision: str) -> float:
    timer = Throughput(warmup, steps, batch)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=warmup + steps,
                        precision=precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    return timer.images_per_second


def backbone_and_head(channels_last: bool):
    from ssl_runner.config import BackboneConfig
    from ssl_runner.models.backbones import build_backbone
    from ssl_runner.models.heads import MLPHead

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet18", depth=18), 32).use_channels_last(channels_last)
    return backbone, MLPHead([backbone.feature_dim, 512, 128])


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)


def peer_throughput(data_root: Path, batch: int, workers: int, warmup: int, steps: int, precision: str) -> float:
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from torchvision.datasets import ImageFolder

    from ssl_runner.config import CIFAR10_MEAN, CIFAR10_STD

    class LightlySimCLR(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.projection_head = backbone_and_head(channels_last=False)
            self.criterion = NTXentLoss(temperature=0.5)

        def training_step(self, batch, batch_idx):
            (x0, x1), _ = batch
            z0 = self.projection_head(self.backbone(x0))
            z1 = self.projection_head(self.backbone(x1))
            loss = self.criterion(z0, z1)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return sgd(self.parameters())

    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0, cj_strength=0.5,
                                normalize={"mean": CIFAR10_MEAN, "std": CIFAR10_STD})
    dataset = ImageFolder(str(data_root / "cifar10" / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    return fit(LightlySimCLR(), loader, warmup, steps, batch, precision)


def ours_throughput(data_root: Path, batch: int, warmup: int, steps: int, precision: str,
                    compile_modules: bool = False) -> float:
    from hydra import compose, initialize_config_dir

    from ssl_runner.__main__ import config_dir
    from ssl_runner.validation import validate
    from ssl_runner.data.datasets import load_split
    from ssl_runner.data.loaders import pretrain_loader
    from ssl_runner.methods import METHODS, build_method
    from ssl_runner.stages import stage_names
    from ssl_runner.runtime import keep_freed_memory

    overrides = ["method=simclr", "backbone=resnet18", f"data.root={data_root / 'cifar10'}",
                 f"data.subset={batch * (warmup + steps + 1)}", f"data.batch_size={batch}", "trainer=cpu",
                 "monitor.online_probe=false", "monitor.knn_every_n_epochs=0", "monitor.collapse=false"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=overrides), METHODS, stage_names())
    keep_freed_memory()
    torch.manual_seed(0)
    method = build_method(cfg, 0)  # the same backbone and head, channels-last
    method.configure_optimizers = lambda: sgd(method.parameters())  # the peer's optimizer, exactly
    if compile_modules:  # as trainer.compile=true does
        for module in method.ssl_modules().values():
            module.compile()
    images = load_split(cfg.data, "train", cfg.seed)
    loader = pretrain_loader(cfg.data, images, method.view_maker, batch_size=batch)
    return fit(method, loader, warmup, steps, batch, precision)


def decode_cache_seconds(data_root: Path) -> tuple[float, float]:
    """Seconds to load CIFAR-10's 60,000 JPEGs into memory: decoding them, then
    from the decode cache (data.decode_cache) in a temporary folder."""
    from omegaconf import OmegaConf

    from ssl_runner.config import DataConfig
    from ssl_runner.data.datasets import load_split

    with tempfile.TemporaryDirectory() as tmp:
        cfg = OmegaConf.structured(DataConfig(root=str(data_root / "cifar10"), cache_dir=tmp))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            load_split(cfg, "train", 0)
            load_split(cfg, "test", 0)
            times.append(time.perf_counter() - start)
    return times[0], times[1]


def smoke_start_up(data_root: Path) -> tuple[float, float]:
    """(seconds to the first optimizer step, peak RSS in MiB) of the smoke preset."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SSL_RUNNER_DATA": str(data_root), "CI": "true"}
        for attempt in range(2):
            run_dir = Path(tmp) / f"smoke{attempt}"
            cmd = [sys.executable, "-m", "ssl_runner", "method=simclr", "data=cifar10", "experiment=smoke",
                   "pipeline=pretrain", "eval.random_baseline=false", f"hydra.run.dir={run_dir}"]
            subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return summary["stages"]["pretrain"]["seconds_to_first_step"], peak_kib / 1024


def measure_in_fresh_process(args: argparse.Namespace, side: str, precision: str, workers: int = 0,
                             compile_modules: bool = False) -> float:
    """One side's throughput in a process of its own, so that neither side
    inherits the other's process-wide settings (ours keeps freed memory in the
    heap; the peer, run as its users run it, does not)."""
    cmd = [sys.executable, __file__, "--side", side, "--precision", precision, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--peer-workers", str(workers)]
    if compile_modules:
        cmd.append("--compile")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peer-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--compile", action="store_true", help="also measure ours with torch.compile")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"],
                        help="Lightning precisions, each run on both sides; the first gives the ratio line")
    parser.add_argument("--side", choices=["ours", "peer"], help=argparse.SUPPRESS)  # one measurement, internal
    args = parser.parse_args()
    data_root = Path(os.environ.get("SSL_RUNNER_DATA", "../shared/data")).resolve()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    if args.side == "ours":
        print(ours_throughput(data_root, args.batch, args.warmup, args.steps, args.precision[0], args.compile))
        return
    if args.side == "peer":
        print(peer_throughput(data_root, args.batch, args.peer_workers[0], args.warmup, args.steps,
                              args.precision[0]))
        return

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
          f"threads, torch {torch.__version__}, batch {args.batch} (x2 views), {args.warmup} warm-up + "
          f"{args.steps} timed steps, each measurement in a fresh process")
    startup, peak = smoke_start_up(data_root)
    print(f"smoke preset: first optimizer step {startup:.1f} s after process start, peak RSS {peak:.0f} MiB")
    cold, warm = decode_cache_seconds(data_root)
    print(f"CIFAR-10 into memory (60,000 images): decoded {cold:.1f} s, from the decode cache {warm:.2f} s")
    if args.compile:
        compiled = measure_in_fresh_process(args, "ours", args.precision[0], compile_modules=True)
        print(f"[{args.precision[0]}] ssl-runner with trainer.compile=true: {compiled:7.1f} images/s")
    ratios = {}
    for precision in args.precision:
        ours = measure_in_fresh_process(args, "ours", precision)
        print(f"[{precision}] ssl-runner:                   {ours:7.1f} images/s")
        peers = {}
        for workers in args.peer_workers:
            peers[workers] = measure_in_fresh_process(args, "peer", precision, workers)
            print(f"[{precision}] lightly, {workers} DataLoader workers: {peers[workers]:7.1f} images/s")
        ratios[precision] = ours / max(peers.values())
        print(f"[{precision}] ours / faster lightly: {ratios[precision]:.2f}")
    # The last line: the first precision given (fp32 by default), both sides alike.
    print(f"ratio={ratios[args.precision[0]]:.2f}")


if __name__ == "__main__":
    main()
