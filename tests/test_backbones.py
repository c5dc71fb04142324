"""Backbones: torchvision's layout, the CIFAR stem, the width multiplier."""

import torch
import torchvision
import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from ssl_runner.config import BackboneConfig
from ssl_runner.models.backbones import build_backbone
from ssl_runner.models.heads import MLPHead


def cfg(**kw):
    return OmegaConf.structured(BackboneConfig(**kw))


def test_resnet_matches_torchvision_keys_and_shapes():
    for depth, ctor in ((18, torchvision.models.resnet18), (50, torchvision.models.resnet50)):
        ours = build_backbone(cfg(name=f"resnet{depth}", depth=depth), image_size=224).state_dict()
        theirs = {k: v for k, v in ctor().state_dict().items() if not k.startswith("fc.")}
        assert list(ours) == list(theirs)
        assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_cifar_stem_switches_on_for_small_images():
    small = build_backbone(cfg(depth=18), image_size=32)
    large = build_backbone(cfg(depth=18), image_size=224)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and isinstance(large.maxpool, torch.nn.MaxPool2d)
    forced = build_backbone(cfg(depth=18, cifar_stem=False), image_size=32)
    assert forced.conv1.kernel_size == (7, 7)
    # 32 px through the CIFAR stem leaves a 4x4 map at layer4 (strides 1,2,2,2).
    seen = {}
    small.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    out = small.eval()(torch.randn(2, 3, 32, 32))
    assert seen["shape"][-2:] == (4, 4) and out.shape == (2, 512)


def test_width_multiplier_and_tiny_variant():
    tiny = build_backbone(cfg(name="resnet_tiny", depth=10, width=0.25), image_size=32)
    assert tiny.feature_dim == 128
    assert [tiny.layer1[0].conv1.out_channels, tiny.layer4[0].conv1.out_channels] == [16, 128]
    assert len(tiny.layer1) == 1
    assert tiny.eval()(torch.randn(3, 3, 32, 32)).shape == (3, 128)
    assert build_backbone(cfg(depth=50, width=0.5), image_size=32).feature_dim == 1024


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    net = build_backbone(cfg(depth=18, zero_init_residual=True), image_size=32)
    assert torch.count_nonzero(net.layer1[0].bn2.weight) == 0
    assert torch.count_nonzero(net.layer1[0].bn1.weight) > 0


def test_mlp_head_layout():
    head = MLPHead([8, 16, 4])
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head.net[0].bias is None and head.net[3].bias is not None
    assert head(torch.randn(5, 8)).shape == (5, 4)


def test_an_intermediate_stage_gives_the_pooled_features_of_that_stage():
    from ssl_runner.models.backbones import TruncatedBackbone

    torch.manual_seed(0)
    net = build_backbone(compose_config(["backbone=resnet_tiny"]).backbone, 32).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        stem = net.relu(net.bn1(net.conv1(x)))
        layer2 = net.layer2(net.layer1(stem))
        truncated = net.truncated("layer2")
        torch.testing.assert_close(truncated(x), layer2.mean((2, 3)))
        assert isinstance(truncated, TruncatedBackbone) and truncated.feature_dim == 32 == truncated(x).shape[1]
        torch.testing.assert_close(net.truncated("layer4")(x), net(x))
    assert [net.truncated(f"layer{i}").feature_dim for i in range(1, 5)] == [16, 32, 64, 128]
    with pytest.raises(ValueError, match="unknown backbone stage"):
        net.truncated("block2")


def test_feature_layer_is_validated():
    from ssl_runner.errors import UserError

    with pytest.raises(UserError, match="eval.feature_layer"):
        compose_config(["eval.feature_layer=layer5"])


@pytest.mark.parametrize("overrides, image_size", [
    (dict(name="resnet_tiny", depth=10, width=0.25), 32),
    (dict(name="resnet_tiny", depth=10, width=0.25), 33),
    (dict(name="resnet_tiny", depth=10, width=0.25, cifar_stem=False), 97),
    (dict(name="resnet50", depth=50, width=0.125), 224),
    (dict(name="nin", width=0.1), 32),
    (dict(name="nin_small", num_blocks=5, width=0.1), 27),
])
def test_feature_map_shape_is_the_shape_a_forward_pass_gives(overrides, image_size):
    from ssl_runner.models.backbones import feature_map_shape

    net = build_backbone(cfg(**overrides), image_size=image_size).eval()
    x = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        for stage in net.stage_names:
            assert feature_map_shape(net, stage, image_size) == tuple(net.feature_map(x, stage).shape[1:]), stage
            truncated = net.truncated(stage)
            assert feature_map_shape(truncated, stage, image_size) == feature_map_shape(net, stage, image_size)
    with pytest.raises(ValueError, match="unknown backbone stage"):
        feature_map_shape(net.truncated(net.stage_names[0]), net.stage_names[-1], image_size)


def test_the_name_selects_the_backbone_and_each_kind_checks_its_settings():
    from ssl_runner.errors import UserError
    from ssl_runner.models.backbones.nin import NetworkInNetwork
    from ssl_runner.models.backbones.resnet import ResNet

    assert isinstance(build_backbone(cfg(name="nin_tiny", width=0.1), 32), NetworkInNetwork)
    assert isinstance(build_backbone(cfg(name="ninja", depth=10, width=0.25), 32), ResNet)
    with pytest.raises(UserError, match="config key 'backbone.depth' is '7', which is not one of: 10, 18, 34, 50."):
        compose_config(["backbone.depth=7"])
    with pytest.raises(UserError, match="config key 'backbone.width' is 0.0; it must be positive"):
        compose_config(["backbone.width=0"])
