"""The export of the pretrained backbone for torchvision and timm (the export
stage and scripts/export_encoder.py): strict loads, equal features on real
CIFAR-10, the refusal of backbones without an equivalent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO, cli, cli_env, compose_config
from omegaconf import OmegaConf

from ssl_runner.backbone_export import check_exportable, export_backbone, exported_arch
from ssl_runner.config import DataConfig
from ssl_runner.data.datasets import load_split
from ssl_runner.encoder import load_encoder, save_encoder
from ssl_runner.errors import UserError
from ssl_runner.models.backbones import build_backbone
from ssl_runner.views.pixels import eval_view

timm = pytest.importorskip("timm")

SCRIPT = REPO / "scripts" / "export_encoder.py"


def run_load_lines(lines, cwd: Path, monkeypatch) -> torch.nn.Module:
    """The model the printed / recorded load lines build, run as a user runs them."""
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    exec("\n".join(lines), namespace)  # noqa: S102  (the lines under test)
    return namespace["model"].eval()


def cifar_batch(cifar_root: Path, count: int = 16) -> torch.Tensor:
    """`count` real CIFAR-10 test images, normalised as the evaluation stages do."""
    data = OmegaConf.structured(DataConfig(root=str(cifar_root), test_subset=count))
    images = load_split(data, "test", seed=0).images
    return eval_view(images, list(data.mean), list(data.std))


def trained_like(backbone: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """`backbone` with BatchNorm affine weights and running statistics away
    from their initial 1 / 0: a swapped or dropped BN tensor then changes
    the features, as it would for a pretrained encoder."""
    gen = torch.Generator().manual_seed(0)
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.rand(m.bias.shape, generator=gen) * 0.2 - 0.1
    backbone.train()
    with torch.no_grad():
        backbone(images)
    return backbone.eval()


@pytest.fixture(scope="module")
def resnet18_export(cifar_root, tmp_path_factory):
    """A CIFAR-stem ResNet-18 saved as the pretrain stage saves it, loaded
    strictly, exported; with the real images and its features."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config(["backbone=resnet18", "experiment=smoke", f"data.root={cifar_root}"])
    images = cifar_batch(cifar_root)
    backbone = trained_like(build_backbone(cfg.backbone, 32), images)
    (run_dir / "pretrain").mkdir()
    save_encoder(run_dir / "pretrain" / "encoder.pt", cfg, backbone, {})
    encoder = load_encoder(run_dir / "pretrain" / "encoder.pt")
    result = export_backbone(encoder.backbone, run_dir / "export", "backbone 'resnet18'", relative_to=run_dir)
    with torch.no_grad():
        features = encoder.backbone.eval()(images)
    return run_dir, result, images, features, backbone.state_dict()


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_the_export_loads_strictly_and_gives_the_runners_features(resnet18_export, fmt, monkeypatch):
    run_dir, result, images, features, weights = resnet18_export
    assert (result["arch"], result["cifar_stem"], result["feature_dim"]) == ("resnet18", True, 512)
    assert result["files"][fmt] == f"export/resnet18_{fmt}.pt"
    state = torch.load(run_dir / result["files"][fmt], weights_only=True)
    # Every tensor of the backbone (BN statistics included), nothing else: no fc.
    assert set(state) == set(weights) and not any(k.startswith("fc.") for k in state)
    assert all(torch.equal(state[k], weights[k]) for k in weights)
    model = run_load_lines(result["load"][fmt], run_dir, monkeypatch)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        theirs = model(images)
    assert theirs.shape == (len(images), 512) and features.std(0).mean() > 1e-3  # not a constant map
    torch.testing.assert_close(theirs, features, rtol=1e-5, atol=1e-5)


def test_the_cifar_stem_lines_are_needed(resnet18_export):
    run_dir, result, *_ = resnet18_export
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    with pytest.raises(RuntimeError, match="conv1.weight"):  # torchvision's 7x7 stem
        model.load_state_dict(torch.load(run_dir / result["files"]["torchvision"], weights_only=True), strict=True)


def test_a_channels_last_imagenet_stem_resnet50_loads_into_torchvision_and_timm(tmp_path, monkeypatch):
    cfg = compose_config(["backbone=resnet50"])
    backbone = build_backbone(cfg.backbone, 224).use_channels_last(True)  # 224 px: the ImageNet stem
    result = export_backbone(backbone, tmp_path, "backbone 'resnet50'")
    assert (result["arch"], result["cifar_stem"], result["feature_dim"]) == ("resnet50", False, 2048)
    assert sorted(result["files"]) == ["timm", "torchvision"]
    expected = backbone.state_dict()
    for fmt, lines in result["load"].items():
        assert not any("conv1 =" in line or "maxpool" in line for line in lines)
        state = torch.load(result["files"][fmt], weights_only=True)
        assert all(t.is_contiguous() for t in state.values())  # plain layout, whatever the run used
        model = run_load_lines(lines, tmp_path, monkeypatch)  # strict: raises on any missing or extra key
        assert isinstance(model.layer1[0], (torchvision.models.resnet.Bottleneck, timm.models.resnet.Bottleneck))
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_the_whole_backbone_is_exported_not_the_feature_layer(tmp_path):
    backbone = build_backbone(compose_config(["backbone=resnet18"]).backbone, 32)
    result = export_backbone(backbone.truncated("layer3"), tmp_path, "backbone 'resnet18'")
    state = torch.load(result["files"]["torchvision"], weights_only=True)
    assert result["feature_dim"] == 512 and "layer4.1.bn2.running_var" in state


@pytest.mark.parametrize("overrides, named", [
    (["experiment=smoke"], "backbone 'resnet_tiny' (a ResNet-10 at width 0.25)"),
    (["backbone=nin"], "backbone 'nin' (a Network-In-Network of 4 blocks)"),
    (["backbone=resnet18", "backbone.width=0.5"], "backbone 'resnet18' (a ResNet-18 at width 0.5)"),
])
def test_backbones_without_an_equivalent_are_refused_at_validation(overrides, named):
    with pytest.raises(UserError) as refused:
        compose_config([*overrides, "pipeline.stages=[pretrain,export,knn]"])
    message = str(refused.value)
    assert message.startswith(named) and "no torchvision or timm equivalent" in message
    assert "backbone=resnet18" in message and "pipeline.stages" in message
    compose_config(overrides)  # without export, the same backbone is fine


def test_validation_leaves_a_checkpoints_architecture_to_the_stage():
    # The run adopts the checkpoint's backbone, which the config does not name.
    cfg = compose_config(["experiment=smoke", "pipeline.stages=[export]", "checkpoint=/some/encoder.pt"])
    check_exportable(cfg)
    with pytest.raises(UserError, match=r"^backbone 'resnet_tiny' \(a ResNet-10 at width 0.25\)"):
        exported_arch(build_backbone(cfg.backbone, 32), "backbone 'resnet_tiny'")


def run_script(cifar_root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=cli_env(cifar_root),
                          capture_output=True, text=True, timeout=120)


def test_the_script_refuses_an_encoder_without_an_equivalent(cifar_root, tmp_path):
    cfg = compose_config(["experiment=smoke"])
    encoder = tmp_path / "pretrain" / "encoder.pt"
    encoder.parent.mkdir()
    save_encoder(encoder, cfg, build_backbone(cfg.backbone, 32), {})
    proc = run_script(cifar_root, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert f"error: the encoder {encoder} (a ResNet-10 at width 0.25) has no torchvision or timm equivalent" in message
    assert "backbone=resnet18" in message and not (tmp_path / "export").exists()


# ---- through the CLI on real CIFAR-10 ----------------------------------------------------

@pytest.fixture(scope="module")
def exported_run(cifar_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    # One step of 128 images: a ResNet-18 on 2 CPU cores. Nothing here reads the
    # kNN monitor or the random-init floor: skipped for time.
    proc = cli(cifar_root, "data=cifar10", "experiment=smoke", "backbone=resnet18", "data.subset=128",
               "data.test_subset=128", "trainer.max_epochs=1", "pipeline.stages=[pretrain,export]",
               "monitor.knn_every_n_epochs=0", "eval.random_baseline=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def encoder_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "pretrain" / "encoder.pt", weights_only=True)["backbone"]


@pytest.mark.integration
def test_a_pipeline_with_export_records_and_writes_loadable_files(exported_run, monkeypatch):
    summary = json.loads((exported_run / "summary.json").read_text())
    record = summary["stages"]["export"]
    assert summary["status"] == "done" and record["status"] == "done"
    assert record["files"] == {"torchvision": "export/resnet18_torchvision.pt", "timm": "export/resnet18_timm.pt"}
    assert (record["arch"], record["cifar_stem"], record["image_size"]) == ("resnet18", True, 32)
    # The export does not replace the manifest's record of pretrain's encoder.
    assert json.loads((exported_run / "manifest.json").read_text())["encoder"] == "pretrain/encoder.pt"
    trained = encoder_weights(exported_run)
    for fmt, lines in record["load"].items():
        loaded = run_load_lines(lines, exported_run, monkeypatch).state_dict()
        assert all(torch.equal(loaded[k], trained[k]) for k in trained)


@pytest.mark.integration
def test_the_script_exports_an_existing_run(exported_run, cifar_root, tmp_path, monkeypatch):
    proc = run_script(cifar_root, exported_run, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resnet18, CIFAR stem" in proc.stdout
    trained = encoder_weights(exported_run)
    # The printed load lines, as a user copies them (indented under each "wrote" line).
    blocks = proc.stdout.split("\nwrote ")[1:]
    assert [b.split(";")[0] for b in blocks] == [str((tmp_path / "out").resolve() / f"resnet18_{f}.pt") for f in ("torchvision", "timm")]
    for block in blocks:
        lines = [line[4:] for line in block.splitlines() if line.startswith("    ")]
        loaded = run_load_lines(lines, REPO, monkeypatch).state_dict()
        assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    # Given the encoder.pt itself, it writes into the run's export/ folder, as the stage does.
    stage_file = exported_run / "export" / "resnet18_timm.pt"
    stage_file.unlink()
    proc = run_script(cifar_root, exported_run / "pretrain" / "encoder.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(stage_file, weights_only=True)
    assert all(torch.equal(state[k], trained[k]) for k in trained)


@pytest.mark.integration
def test_export_of_resnet_tiny_is_refused_before_training(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli(cifar_root, "data=cifar10", "experiment=smoke", "backbone=resnet_tiny", "data.subset=256",
               "data.test_subset=128", "trainer.max_epochs=1", "pipeline.stages=[pretrain,export,knn,linear]",
               f"hydra.run.dir={run_dir}", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())
    assert "error: backbone 'resnet_tiny' (a ResNet-10 at width 0.25) has no torchvision or timm equivalent" in message
    assert "backbone=resnet18" in message
    assert not (run_dir / "pretrain").exists()  # nothing trained
