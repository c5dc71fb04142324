"""End-to-end SimCLR pretraining throughput on this machine's CPU: ssl-runner
against a lightly-based Lightning SimCLR, same model, batch, optimizer and
precision, each measured in a fresh process (as each is run by its users).

    SSL_RUNNER_DATA=../shared/data python scripts/bench_train.py [--batch 256] [--steps 4] [--warmup 2] [--repeats 3]

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
`--warmup` steps, data loading included. Each side is measured `--repeats`
times, interleaved (ours, lightly with 0 workers, with 2, ours, ...), each
in a fresh process; each precision prints the machine-independent summary:
every side's median and range and the ratio of medians against the faster
peer. The last line is ratio=R (that ratio at the first precision; higher is
better). Also prints, for
`python -m ssl_runner method=simclr experiment=smoke`, the seconds from process
start to the first optimizer step (second of two runs, so the OS file cache
is warm) and the run's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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
    """Images per second between the end of step `warmup` and the end of step
    `warmup + steps` (on a GPU, after its queued work is done), and on a GPU
    the busy % that NVML reports over those steps (the share of time a kernel
    was running), sampled every 20 ms."""

    def __init__(self, warmup: int, steps: int, batch: int) -> None:
        self.warmup, self.steps, self.batch = warmup, steps, batch
        self.start = self.end = 0.0
        self.busy_samples: list = []
        self._sampling = False

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _sample_busy(self) -> None:
        while self._sampling:
            try:
                self.busy_samples.append(torch.cuda.utilization())
            except Exception:  # no NVML binding: no busy figure
                return
            time.sleep(0.02)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self._sync()
            self.start = time.perf_counter()
            if torch.cuda.is_available():
                import threading

                self._sampling = True
                threading.Thread(target=self._sample_busy, daemon=True).start()
        elif batch_idx == self.warmup + self.steps - 1:
            self._sync()
            self.end = time.perf_counter()
            self._sampling = False

    @property
    def images_per_second(self) -> float:
        return self.steps * self.batch / (self.end - self.start)

    @property
    def busy_percent(self):
        return sum(self.busy_samples) / len(self.busy_samples) if self.busy_samples else None


def fit(module: L.LightningModule, loader, warmup: int, steps: int, batch: int, precision: str,
        accelerator: str = "cpu", callbacks: tuple = ()) -> dict:
    timer = Throughput(warmup, steps, batch)
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_epochs=1, limit_train_batches=warmup + steps,
                        precision=precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer, *callbacks], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader)
    return {"images_per_second": round(timer.images_per_second, 1), "gpu_busy_percent": timer.busy_percent}


# The backbones a measurement can use (--backbone): the CIFAR ResNet-18 of the
# figures, and resnet_tiny for the GPU check's reduced CPU form.
BACKBONES = {"resnet18": dict(name="resnet18", depth=18), "resnet_tiny": dict(name="resnet_tiny", depth=10, width=0.25)}


def backbone_and_head(channels_last: bool, backbone_name: str = "resnet18"):
    from ssl_runner.config import BackboneConfig
    from ssl_runner.models.backbones import build_backbone
    from ssl_runner.models.heads import MLPHead

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(**BACKBONES[backbone_name]), 32).use_channels_last(channels_last)
    return backbone, MLPHead([backbone.feature_dim, 512, 128])


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)


def peer_throughput(data_root: Path, batch: int, workers: int, warmup: int, steps: int, precision: str,
                    accelerator: str = "cpu", backbone_name: str = "resnet18", callbacks: tuple = ()) -> dict:
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from torchvision.datasets import ImageFolder

    from ssl_runner.config import CIFAR10_MEAN, CIFAR10_STD

    class LightlySimCLR(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.projection_head = backbone_and_head(False, backbone_name)
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
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=accelerator == "gpu")
    return fit(LightlySimCLR(), loader, warmup, steps, batch, precision, accelerator, callbacks)


def ours_throughput(data_root: Path, batch: int, warmup: int, steps: int, precision: str,
                    compile_modules: bool = False, accelerator: str = "cpu", backbone_name: str = "resnet18",
                    callbacks: tuple = ()) -> dict:
    from hydra import compose, initialize_config_dir

    from ssl_runner.__main__ import config_dir
    from ssl_runner.validation import validate
    from ssl_runner.data.datasets import load_split
    from ssl_runner.data.loaders import pretrain_loader
    from ssl_runner.methods import METHODS, build_method
    from ssl_runner.stages import stage_names
    from ssl_runner.runtime import keep_freed_memory

    overrides = ["method=simclr", f"backbone={backbone_name}", f"data.root={data_root / 'cifar10'}",
                 f"data.subset={batch * (warmup + steps + 1)}", f"data.batch_size={batch}",
                 "trainer=gpu" if accelerator == "gpu" else "trainer=cpu",
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
    # On a GPU the images are held there and batches drawn without a DataLoader, as the runner does.
    device = torch.device("cuda") if accelerator == "gpu" else None
    loader = pretrain_loader(cfg.data, images, method.view_maker, batch_size=batch, device=device)
    return fit(method, loader, warmup, steps, batch, precision, accelerator, callbacks)


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
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peer-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each side, interleaved")
    parser.add_argument("--compile", action="store_true", help="also measure ours with torch.compile")
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"],
                        help="Lightning precisions, each run on both sides; the first gives the ratio line")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu",
                        help="with --side: where one measurement runs (scripts/gpu_check.py measures on a GPU)")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    # One measurement, printed as a JSON line (images_per_second, gpu_busy_percent):
    # what the comparison below and scripts/gpu_check.py start in fresh processes.
    parser.add_argument("--side", choices=["ours", "peer"])
    args = parser.parse_args()
    data_root = Path(os.environ.get("SSL_RUNNER_DATA", "../shared/data")).resolve()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    if args.side == "ours":
        print(json.dumps(ours_throughput(data_root, args.batch, args.warmup, args.steps, args.precision[0],
                                         args.compile, args.accelerator, args.backbone)))
        return
    if args.side == "peer":
        print(json.dumps(peer_throughput(data_root, args.batch, args.peer_workers[0], args.warmup, args.steps,
                                         args.precision[0], args.accelerator, args.backbone)))
        return

    from bench_common import interleaved, machine_line, report

    print(f"{machine_line()}; batch {args.batch} (x2 views), {args.warmup} warm-up + {args.steps} timed steps, "
          f"{args.repeats} measurements per side, interleaved, each in a fresh process")
    startup, peak = smoke_start_up(data_root)
    print(f"smoke preset: first optimizer step {startup:.1f} s after process start, peak RSS {peak:.0f} MiB")
    cold, warm = decode_cache_seconds(data_root)
    print(f"CIFAR-10 into memory (60,000 images): decoded {cold:.1f} s, from the decode cache {warm:.2f} s")
    ratios = {}
    for precision in args.precision:
        sides = {"ours": lambda: measure_in_fresh_process(args, "ours", precision)}
        if args.compile:
            sides["ours_compiled"] = lambda: measure_in_fresh_process(args, "ours", precision, compile_modules=True)
        for workers in args.peer_workers:
            sides[f"lightly_{workers}_workers"] = (
                lambda workers=workers: measure_in_fresh_process(args, "peer", precision, workers))
        results = interleaved(sides, args.repeats)
        peers = {name: values for name, values in results.items() if name.startswith("lightly")}
        faster_peer = max(peers, key=lambda name: statistics.median(peers[name]))
        print(f"[{precision}] (the faster lightly: {faster_peer})")
        ratios[precision] = report(results, "ours", faster_peer)
    # The last line: the first precision given (fp32 by default), both sides alike.
    print(f"ratio={ratios[args.precision[0]]:.2f}")

if __name__ == "__main__":
    main()
