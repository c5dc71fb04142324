"""Numerics that differ between a CPU and a CUDA device (issue 19).

Each test is a function of `device`. Its `cuda` case is marked `cuda` and
skipped without a CUDA device; run it on a GPU machine with `pytest -m cuda`.
Its `cpu` case runs everywhere and compares against an independent CPU path,
so the test's logic is checked (and can fail) on machines without a GPU.
Fake data throughout: these are unit tests of numerics.
"""

from __future__ import annotations

import contextlib
import copy
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from ssl_runner.__main__ import config_dir
from ssl_runner.config import BackboneConfig
from ssl_runner.distributed import collectives
from ssl_runner.losses import info_nce_loss, nt_xent_loss
from ssl_runner.models.backbones import build_backbone
from ssl_runner.models.global_batchnorm import GlobalBatchNorm, convert_batchnorm
from ssl_runner.views.recipe import ViewRecipe

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                                   reason="no CUDA device")]),
]


# ---- views ------------------------------------------------------------------------------------

def _one_image_params(params, i: int):
    return {name: {key: value[i:i + 1] for key, value in p.items()} for name, p in params.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_views_on_device_equal_the_cpu_batched_views_for_the_same_parameters(device):
    """Parameters are sampled once, on the CPU; the reference applies them to
    the whole batch on the CPU, where the crop resamples with the batched
    matrices of `roi_align_weights` (batches of 16 or more). On CUDA the
    candidate is the same batch on the device (torchvision's CUDA roi_align and
    the colour maths on the GPU); on a CPU it is one image at a time, where
    the crop is torchvision's CPU roi_align: an independent path."""
    n, height, width, size = 32, 40, 48, 32  # crops both shrink and enlarge to 32 px
    # Mean 0, std 1: the views stay in [0, 1], so the tolerance is in pixel units.
    recipe = ViewRecipe.simclr(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), hflip_p=0.5, jitter_p=0.8,
                               jitter_strength=1.0, grayscale_p=0.2, blur_p=0.5, solarize_p=0.2, rotation_p=0.5)
    assert recipe.names == ["crop", "flip", "rotation", "color", "grayscale", "blur", "solarize"]
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    params = recipe.sample(n, height, width, generator=torch.Generator().manual_seed(1))
    # Every coin lands both ways in this batch, so every augmentation is compared.
    for name, key in (("flip", "flip"), ("rotation", "quarter_turns"), ("color", "apply"), ("grayscale", "gray"),
                      ("blur", "apply"), ("solarize", "apply")):
        assert 0 < int((params[name][key] != 0).sum()) < n, name

    reference = recipe.apply(images, params)
    if device == "cpu":
        candidate = torch.cat([recipe.apply(images[i:i + 1], _one_image_params(params, i)) for i in range(n)])
    else:
        candidate = recipe.apply(images.to(device), params)  # the augmentations move the parameters over
        assert candidate.device.type == device
    assert candidate.shape == reference.shape == (n, 3, size, size)
    # 1e-4 on [0, 1] values: float32 bilinear interpolation (sums of up to ~20
    # weighted pixels, in another order) differs by ~1e-7 to 1e-6, and the
    # colour factors (up to 1.8 for brightness, contrast, saturation) grow that
    # to a few 1e-6 (measured, CPU batched vs one by one: 1.3e-6). A sample
    # position off by 1% of the crop, or a parameter applied to the wrong
    # image, moves pixels by a good part of a uint8 level (3.9e-3) or more.
    torch.testing.assert_close(candidate.cpu(), reference, atol=1e-4, rtol=0)


# ---- contrastive losses under bf16 autocast ------------------------------------------------------

def _linear(device: str, seed: int) -> nn.Linear:
    """A small projection, so that autocast runs its matmul (and the loss's) in bf16."""
    layer = nn.Linear(64, 32)
    g = torch.Generator().manual_seed(seed)
    nn.init.normal_(layer.weight, std=64 ** -0.5, generator=g)
    nn.init.normal_(layer.bias, std=0.1, generator=g)
    return layer.to(device)


def _loss_and_gradient(layer: nn.Linear, loss_of, device: str, bf16: bool):
    layer.zero_grad()
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        loss, embeddings = loss_of(layer)
    # The embeddings really are bf16 under autocast; the loss is float32
    # (cross_entropy is on autocast's float32 list: the softmax upcasts).
    assert embeddings.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert loss.dtype == torch.float32
    loss.backward()
    return loss.detach().cpu(), layer.weight.grad.detach().flatten().cpu()


def _assert_bf16_matches_float32(layer: nn.Linear, loss_of, device: str) -> None:
    loss32, grad32 = _loss_and_gradient(layer, loss_of, device, bf16=False)
    loss16, grad16 = _loss_and_gradient(layer, loss_of, device, bf16=True)
    # The code does not upcast the logits itself: they come out of a bf16
    # matmul, rounded to bf16's 8 significant bits (relative error up to 2^-9,
    # about 2e-3, on every similarity); only the log-softmax runs in float32
    # (autocast upcasts cross_entropy). The loss moves by a few such rounding
    # errors, partly averaging over the anchors: measured on CPU here below
    # 1e-3 relative (losses of 2 to 4, as in training). rel 1e-2 is about five
    # bf16 ulps. (Near-zero losses, all positives far easier than every
    # negative, are not a fair case for a relative bound: there the logits'
    # own rounding reaches 1e-2 of the loss.)
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    # Gradients: bf16 rounding perturbs each entry, the direction must stay.
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.99
    assert grad32.norm() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_nt_xent_under_bf16_autocast_equals_float32(device):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(64, 64, generator=g)
    x2 = x1 + 2.0 * torch.randn(64, 64, generator=g)  # two "views": positives alike, the task not trivial
    x1, x2 = x1.to(device), x2.to(device)

    def loss_of(layer):
        z1, z2 = layer(x1), layer(x2)
        # SimCLR's ImageNet temperature; the CIFAR default (0.5, conf/method/simclr.yaml)
        # gives smaller logits, so smaller bf16 errors.
        return nt_xent_loss(z1, z2, temperature=0.1), z1

    _assert_bf16_matches_float32(_linear(device, 1), loss_of, device)


@pytest.mark.parametrize("device", DEVICES)
def test_info_nce_under_bf16_autocast_equals_float32(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=g)
    x_key = x + 2.0 * torch.randn(64, 64, generator=g)
    queue = F.normalize(torch.randn(1024, 32, generator=g), dim=1)  # MoCo's queue: stored float32, no gradient
    x, x_key, queue = x.to(device), x_key.to(device), queue.to(device)

    def loss_of(layer):
        q = layer(x)
        return info_nce_loss(q, layer(x_key), queue, temperature=0.07), q  # MoCo v1's (conf/method/mocov1.yaml)

    _assert_bf16_matches_float32(_linear(device, 2), loss_of, device)


# ---- SyncBatchNorm conversion ------------------------------------------------------------------

def _backbone(name: str):
    preset = OmegaConf.load(Path(config_dir()) / "backbone" / f"{name}.yaml")
    return build_backbone(OmegaConf.merge(OmegaConf.structured(BackboneConfig), preset), image_size=32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["resnet18", "resnet_tiny", "nin"])
def test_syncbatchnorm_conversion_keeps_the_state_dict(device, name):
    torch.manual_seed(0)
    plain = _backbone(name).to(device)
    bn_count = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    synced = convert_batchnorm(copy.deepcopy(plain), "cuda")  # the runner's conversion on CUDA
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == bn_count > 0
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in synced.modules())
    plain_state, synced_state = plain.state_dict(), synced.state_dict()
    assert list(synced_state) == list(plain_state)
    assert all(synced_state[k].shape == plain_state[k].shape for k in plain_state)

    # A checkpoint of either loads strictly into the other, values and all.
    torch.manual_seed(1)
    other = _backbone(name).to(device)
    with torch.no_grad():  # distinct running statistics, so the load has something to move
        for m in other.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    synced.load_state_dict(other.state_dict(), strict=True)
    plain.load_state_dict(synced.state_dict(), strict=True)
    plain_state, synced_state = plain.state_dict(), synced.state_dict()
    for k, v in other.state_dict().items():
        assert torch.equal(plain_state[k], v) and torch.equal(synced_state[k], v), k
    # In eval mode (no synchronisation) the converted network is the same
    # function. In float64, so that cuDNN's choice of algorithm (TF32 for
    # float32 convolutions, by default) cannot tell the two apart.
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # quick on a CPU
    with torch.no_grad():
        torch.testing.assert_close(synced.double().eval()(x.to(device)), plain.double().eval()(x.to(device)),
                                   atol=1e-9, rtol=1e-9)


# ---- GlobalBatchNorm against BatchNorm / SyncBatchNorm on one process ----------------------------------

@contextlib.contextmanager
def _single_process_group(backend: str):
    assert not dist.is_initialized(), "a process group is already up"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device", DEVICES)
def test_global_batchnorm_agrees_with_syncbatchnorm_on_one_process(device, monkeypatch):
    """On one process both layers would fall back to plain batch norm
    (F.batch_norm), which would make the comparison empty; so GlobalBatchNorm
    is told the world is larger and runs its synchronised path: its moments
    about the running mean, a real all-reduce (over the one rank) and its own
    running-statistics update. The reference is torch's: SyncBatchNorm on CUDA
    (in training mode with the process group up; it refuses CPU tensors there),
    BatchNorm2d on a CPU, which is what SyncBatchNorm computes on one process."""
    reduces = []
    all_reduce_sum = collectives.all_reduce_sum
    monkeypatch.setattr(collectives, "world_size", lambda: 2)
    monkeypatch.setattr(collectives, "all_reduce_sum", lambda x: reduces.append(1) or all_reduce_sum(x))

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 3, 5, 5, generator=g) * 2 + 1).to(device)
    readout = torch.randn(8, 3, 5, 5, generator=g).to(device)  # loss = sum(y * readout)
    weight, bias = torch.randn(3, generator=g), torch.randn(3, generator=g)
    layers = {"global": GlobalBatchNorm(3), "torch": nn.SyncBatchNorm(3) if device == "cuda" else nn.BatchNorm2d(3)}
    for layer in layers.values():
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        layer.to(device)

    results = {}
    with _single_process_group("nccl" if device == "cuda" else "gloo"):
        for kind, layer in layers.items():
            for step in range(3):  # three steps: the running statistics accumulate
                inputs = (x * (step + 1)).requires_grad_(True)
                layer.zero_grad()
                y = layer(inputs)
                (y * readout).sum().backward()
            results[kind] = {"y": y.detach(), "x_grad": inputs.grad, "weight_grad": layer.weight.grad,
                             "bias_grad": layer.bias.grad, "running_mean": layer.running_mean.clone(),
                             "running_var": layer.running_var.clone(), "eval": layer.eval()(x).detach()}
            assert int(layer.num_batches_tracked) == 3
    assert len(reduces) == 3  # GlobalBatchNorm took its synchronised path at every step
    # float32 both ways; GlobalBatchNorm forms the variance as E[x^2] - E[x]^2
    # about the running mean, torch in one pass: at most 3e-6 apart here (CPU).
    for key, value in results["torch"].items():
        torch.testing.assert_close(results["global"][key], value, atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")
