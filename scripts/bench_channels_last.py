"""Training-step time of a backbone + SimCLR head and loss, NCHW against
channels-last, on this machine (the default of `trainer.channels_last`).

    python scripts/bench_channels_last.py [--backbone resnet_tiny] [--batch 256] [--steps 5]

Prints seconds per step for both layouts (median after one warm-up step) and,
on the last line, ratio=R (NCHW time / channels-last time; > 1: channels-last faster).
"""

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ssl_runner.__main__ import config_dir
from ssl_runner.config import BackboneConfig
from ssl_runner.losses import nt_xent_loss
from ssl_runner.models.backbones import build_backbone
from ssl_runner.models.heads import MLPHead
from ssl_runner.runtime import keep_freed_memory


def step_seconds(channels_last: bool, backbone_cfg, batch: int, steps: int, size: int) -> float:
    torch.manual_seed(0)
    net = build_backbone(backbone_cfg, size).use_channels_last(channels_last)
    head = MLPHead([net.feature_dim, net.feature_dim, 128])
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=0.1, momentum=0.9)
    views = torch.randn(2 * batch, 3, size, size)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        z1, z2 = head(net(views)).chunk(2)
        nt_xent_loss(z1, z2, 0.5).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet_tiny")
    parser.add_argument("--batch", type=int, default=256, help="images per step (2 views each)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    keep_freed_memory()  # as the runner does (trainer.keep_freed_memory); both layouts alike
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        raw = compose(config_name="config", overrides=[f"backbone={args.backbone}"]).backbone
    backbone_cfg = OmegaConf.merge(OmegaConf.structured(BackboneConfig), raw)
    print(f"{args.backbone}, {2 * args.batch} views of {args.size} px per step, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    nchw = step_seconds(False, backbone_cfg, args.batch, args.steps, args.size)
    print(f"NCHW:          {nchw:.3f} s/step  {args.batch / nchw:.0f} images/s")
    nhwc = step_seconds(True, backbone_cfg, args.batch, args.steps, args.size)
    print(f"channels-last: {nhwc:.3f} s/step  {args.batch / nhwc:.0f} images/s")
    print(f"ratio={nchw / nhwc:.2f}")


if __name__ == "__main__":
    main()
