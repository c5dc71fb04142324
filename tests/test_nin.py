"""RotNet's Network-In-Network backbone and the non-linear classifier stage:
shapes per block, parameter counts worked out by hand, the feature_layer
choices, strict export/load, global BatchNorm, and a tiny CLI run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config, run_method_cli
from omegaconf import OmegaConf

from ssl_runner.config import BackboneConfig
from ssl_runner.errors import UserError
from ssl_runner.eval.nonlinear import FeatureMap, NonLinearHead
from ssl_runner.models.backbones import TruncatedBackbone, build_backbone
from ssl_runner.models.backbones.nin import NetworkInNetwork
from ssl_runner.models.global_batchnorm import GlobalBatchNorm, convert_batchnorm


def nin(**kw) -> NetworkInNetwork:
    net = build_backbone(OmegaConf.structured(BackboneConfig(name="nin", **kw)), image_size=32)
    assert isinstance(net, NetworkInNetwork)
    return net


def test_block_shapes_and_feature_dims_for_32_px_input():
    torch.manual_seed(0)
    net = nin().eval()
    assert net.stage_names == ("block1", "block2", "block3", "block4") and net.feature_dim == 192
    x = torch.randn(2, 3, 32, 32)
    shapes = {"block1": (96, 32, 32), "block2": (192, 16, 16), "block3": (192, 8, 8), "block4": (192, 8, 8)}
    with torch.no_grad():
        for name, shape in shapes.items():
            fmap = net.feature_map(x, name)
            assert tuple(fmap.shape) == (2, *shape), name
            torch.testing.assert_close(net(x, upto=name), fmap.mean((2, 3)))
            truncated = net.truncated(name)
            assert isinstance(truncated, TruncatedBackbone) and truncated.feature_dim == shape[0]
            torch.testing.assert_close(truncated(x), fmap.mean((2, 3)))
            torch.testing.assert_close(truncated.feature_map(x), fmap)
        assert net(x).shape == (2, 192)
        torch.testing.assert_close(net.feature_map(x), net.feature_map(x, "block4"))
    # The layers the paper lists: 5x5 then two 1x1 in blocks 1-2, 3x3 then two 1x1 after.
    assert [net.block1.conv1.conv.kernel_size, net.block2.conv1.conv.kernel_size,
            net.block3.conv1.conv.kernel_size, net.block4.conv1.conv.kernel_size] == [(5, 5), (5, 5), (3, 3), (3, 3)]
    assert isinstance(net.block2.pool, torch.nn.MaxPool2d) and isinstance(net.block3.pool, torch.nn.AvgPool2d)
    assert not hasattr(net.block4, "pool") and net.block1.conv1.conv.bias is None
    assert nin(num_blocks=5).stage_names[-1] == "block5"
    with pytest.raises(ValueError, match="at least 3 blocks"):
        NetworkInNetwork(num_blocks=2)


def test_parameter_counts_match_the_hand_computed_ones():
    # width 0.25: 192 -> 48, 160 -> 40, 96 -> 24 channels; conv k*k*in*out, BatchNorm 2*out.
    block1 = 25 * 3 * 48 + 48 * 40 + 40 * 24 + 2 * (48 + 40 + 24)  # 6704
    block2 = 25 * 24 * 48 + 2 * 48 * 48 + 3 * 2 * 48  # 33696
    block3 = 9 * 48 * 48 + 2 * 48 * 48 + 3 * 2 * 48  # 25632
    assert block1 + block2 + block3 == 66032
    small = nin(num_blocks=3, width=0.25)
    assert sum(p.numel() for p in small.parameters()) == 66032 and small.feature_dim == 48
    # The paper's 4-block NIN at width 1: 1,410,368 parameters.
    full = (25 * 3 * 192 + 192 * 160 + 160 * 96 + 2 * (192 + 160 + 96)
            + 25 * 96 * 192 + 2 * 192 * 192 + 6 * 192 + 2 * (9 * 192 * 192 + 2 * 192 * 192 + 6 * 192))
    assert sum(p.numel() for p in nin().parameters()) == full == 1410368


def test_feature_layer_must_be_a_stage_of_the_chosen_backbone():
    assert compose_config(["backbone=nin", "eval.feature_layer=block2"]).eval.feature_layer == "block2"
    assert compose_config(["backbone=resnet_tiny", "eval.feature_layer=layer3"]).eval.feature_layer == "layer3"
    with pytest.raises(UserError, match=r"'eval.feature_layer' is 'layer2', but backbone 'nin' \(a Network-In-Network "
                                        r"of 4 blocks\) has the stages block1, block2, block3 and block4"):
        compose_config(["backbone=nin", "eval.feature_layer=layer2"])
    with pytest.raises(UserError, match="'block5'.*block1, block2, block3 and block4"):
        compose_config(["backbone=nin", "eval.feature_layer=block5"])
    with pytest.raises(UserError, match=r"'block2', but backbone 'resnet18' \(a ResNet\) has the stages layer1"):
        compose_config(["eval.feature_layer=block2"])
    with pytest.raises(UserError, match="backbone.num_blocks"):
        compose_config(["backbone=nin", "backbone.num_blocks=2"])
    with pytest.raises(ValueError, match="unknown backbone stage 'layer2'"):
        nin().truncated("layer2")


def test_resnet_feature_map_is_the_unpooled_stage_output():
    torch.manual_seed(0)
    net = build_backbone(compose_config(["backbone=resnet_tiny"]).backbone, 32).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        fmap = net.feature_map(x, "layer3")
        assert fmap.shape == (2, 64, 8, 8)
        torch.testing.assert_close(net(x, upto="layer3"), fmap.mean((2, 3)))
        assert net.feature_map(x).shape == (2, 128, 4, 4)
        assert FeatureMap(net.truncated("layer2")).output_shape(32) == (32, 16, 16)


@pytest.mark.parametrize("channels, height, width", [(192, 16, 16), (96, 32, 32), (8, 7, 5)])
def test_nonlinear_head_layer_shapes(channels, height, width):
    head = NonLinearHead(channels, height, width, num_classes=10, hidden_dim=200)
    in_features = channels * math.ceil(height / 2) * math.ceil(width / 2)
    linear = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(in_features, 200), (200, 200), (200, 10)]
    assert [m.bias is None for m in linear] == [True, True, False]
    assert [m.num_features for m in head.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [200, 200]
    assert isinstance(head.pool, torch.nn.MaxPool2d) and (head.pool.kernel_size, head.pool.stride) == (3, 2)
    assert head(torch.randn(4, channels, height, width)).shape == (4, 10)
    assert isinstance(NonLinearHead(channels, height, width, 10, pool="avg").pool, torch.nn.AvgPool2d)
    # block2 of the paper's NIN: 192 x 16 x 16 pooled to 192 x 8 x 8 = the official 192*8*8 inputs.
    assert NonLinearHead(192, 16, 16, 10).in_features == 192 * 8 * 8


def test_global_batchnorm_conversion_keeps_the_state_dict():
    net = nin(width=0.1)
    keys = list(net.state_dict())
    converted = convert_batchnorm(net, "cpu")
    assert sum(isinstance(m, GlobalBatchNorm) for m in converted.modules()) == 12  # 3 per block
    assert list(converted.state_dict()) == keys
    assert converted(torch.randn(2, 3, 32, 32)).shape == (2, 19)


@pytest.mark.integration
def test_tiny_rotnet_nin_run_scores_the_nonlinear_stage_and_reloads_strictly(cifar_root, tmp_path):
    from ssl_runner.encoder import load_encoder

    run_dir = tmp_path / "rotnet-nin"
    summary, _ = run_method_cli(
        cifar_root, run_dir, "method=rotnet", "backbone=nin", "backbone.width=0.1", "eval.feature_layer=block2",
        "pipeline.stages=[pretrain,knn,linear,nonlinear]", "data.subset=500", "data.test_subset=200",
        "trainer.max_epochs=1", "monitor.knn_every_n_epochs=0", "eval.linear.epochs=10", "eval.linear.batch_size=50",
        "eval.nonlinear.epochs=1", "eval.nonlinear.batch_size=50", "eval.nonlinear.hidden_dim=32",
        "trainer.channels_last=false")
    nonlinear = summary["stages"]["nonlinear"]
    assert nonlinear["status"] == "done" and 0.0 <= nonlinear["top1"] <= 100.0
    assert nonlinear["features"].startswith("block2 map 19x16x16")
    assert 0.0 <= summary["baseline"]["nonlinear_random_init"]["top1"] <= 100.0
    encoder = run_dir / "pretrain" / "encoder.pt"
    loaded = load_encoder(encoder)
    assert isinstance(loaded.backbone, NetworkInNetwork) and loaded.backbone.feature_dim == 19
    data = torch.load(encoder, weights_only=True)
    data["backbone"].pop("block2.conv1.conv.weight")
    torch.save(data, encoder)
    with pytest.raises(UserError, match="block2.conv1.conv.weight"):
        load_encoder(encoder)
