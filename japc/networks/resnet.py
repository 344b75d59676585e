"""ResNet backbones with torchvision's layout and parameter names, written without torchvision.

torchvision does not import beside the CPU build of torch that japc pins, so the networks are
defined here. Module names and tensor shapes follow ``torchvision.models.resnet``: ``conv1``,
``bn1``, ``layer1`` to ``layer4`` with ``.0.conv1.weight`` and ``.0.downsample.0.weight``, and
``fc``. The parameter totals equal those that torchvision documents for its ImageNet weights.
A state dict saved from a torchvision ResNet therefore loads into these networks without
renaming, and ``replace_stride_with_dilation`` places dilation as torchvision does.

Differences from torchvision:

- ``BasicBlock`` accepts dilation (torchvision raises ``NotImplementedError``), so that
  ResNet-18 and ResNet-34 also reach output stride 16 or 8. The parameters do not change.
- ``include_top=False`` drops ``avgpool`` and ``fc``. The backbone then has exactly the keys of
  torchvision's segmentation backbones (``backbone.*`` in ``deeplabv3_resnet101``).
- Grouped convolutions (ResNeXt, wide ResNet) are not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]

logger = logging.getLogger(__name__)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias whose padding keeps the size at stride 1 for any dilation."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18 and ResNet-34).

    Args:
        in_channels: channels of the block input.
        planes: channels of both convolutions and of the output (``expansion`` is 1).
        stride: stride of the first convolution.
        downsample: projection applied to the shortcut when the shape changes, else None.
        dilation: dilation of both 3x3 convolutions.
    """

    expansion: int = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``[B, C_in, H, W]``."""
        identity = x if self.downsample is None else self.downsample(x)

        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand convolutions with a shortcut (ResNet-50 and deeper).

    The stride sits on the 3x3 convolution, as in torchvision (ResNet v1.5).

    Args:
        in_channels: channels of the block input.
        planes: channels of the 1x1 and 3x3 convolutions. The output has ``4 * planes``.
        stride: stride of the 3x3 convolution.
        downsample: projection applied to the shortcut when the shape changes, else None.
        dilation: dilation of the 3x3 convolution.
    """

    expansion: int = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``[B, C_in, H, W]``."""
        identity = x if self.downsample is None else self.downsample(x)

        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet v1.5 with torchvision's parameter names and optional dilated later stages.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in ``layer1`` to ``layer4``, e.g. ``(3, 4, 23, 3)`` for ResNet-101.
        num_classes: outputs of ``fc``.
        zero_init_residual: set the weight of the last BatchNorm of every block to zero, so that
            each residual branch starts as the identity.
        replace_stride_with_dilation: three flags for ``layer2``, ``layer3`` and ``layer4``. A
            set flag replaces that stage's stride 2 by dilation, as torchvision does: ``(False,
            False, True)`` gives output stride 16 and ``(False, True, True)`` output stride 8.
        include_top: keep ``avgpool`` and ``fc``. Without them the network has the keys of
            torchvision's segmentation backbones and only ``forward_features`` can run.

    Attributes:
        feature_channels: channels of the ``layer4`` output, 512 for ``BasicBlock`` and 2048
            for ``Bottleneck``.
        output_stride: ratio of input size to ``layer4`` size, 8, 16 or 32.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        include_top: bool = True,
    ) -> None:
        super().__init__()
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = (False, False, False)
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 block counts, got {list(layers)}")
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation must give 3 flags (layer2, layer3, layer4), "
                f"got {list(replace_stride_with_dilation)}"
            )

        self.in_channels = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])

        self.feature_channels = 512 * block.expansion
        self.output_stride = 32 // (2 ** sum(bool(flag) for flag in replace_stride_with_dilation))
        self.avgpool: nn.Module | None = None
        self.fc: nn.Linear | None = None
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(self.feature_channels, num_classes)

        self._init_weights(zero_init_residual)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        # As in torchvision, the first block of a dilated stage keeps the previous dilation and
        # only the blocks after it use the doubled one.
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1

        downsample = None
        if stride != 1 or self.in_channels != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.in_channels, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )

        stage = [block(self.in_channels, planes, stride, downsample, previous_dilation)]
        self.in_channels = planes * block.expansion
        for _ in range(1, blocks):
            stage.append(block(self.in_channels, planes, dilation=self.dilation))
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's scheme: Kaiming normal (fan_out, ReLU) for convolutions, BatchNorm as
        # the identity, and PyTorch's default initialisation for fc.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.constant_(module.bn3.weight, 0)
                elif isinstance(module, BasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute ``layer4`` features without the classification head.

        Args:
            x: images ``[B, 3, H, W]``.

        Returns:
            Features ``[B, feature_channels, ceil(H / output_stride), ceil(W / output_stride)]``
            (exactly ``H / output_stride`` when H and W are multiples of 32).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images ``[B, 3, H, W]`` into logits ``[B, num_classes]``.

        Raises:
            RuntimeError: when the network was built with ``include_top=False``.
        """
        if self.avgpool is None or self.fc is None:
            raise RuntimeError(
                "this ResNet was built with include_top=False and has no classification head. "
                "Call forward_features instead"
            )
        x = self.avgpool(self.forward_features(x))
        return self.fc(torch.flatten(x, 1))


def _dilation_flags(output_stride: int) -> tuple[bool, bool, bool]:
    flags = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
    if output_stride not in flags:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return flags[output_stride]


def _build(
    block: type[BasicBlock] | type[Bottleneck],
    layers: Sequence[int],
    output_stride: int,
    include_top: bool,
    **kwargs: object,
) -> ResNet:
    if "replace_stride_with_dilation" not in kwargs:
        kwargs["replace_stride_with_dilation"] = _dilation_flags(output_stride)
    elif output_stride != 32:
        raise ValueError("give either output_stride or replace_stride_with_dilation, not both")
    return ResNet(block, layers, include_top=include_top, **kwargs)  # type: ignore[arg-type]


def resnet18(output_stride: int = 32, include_top: bool = True, **kwargs: object) -> ResNet:
    """ResNet-18 (11,689,512 parameters with ``fc``), randomly initialised.

    Args:
        output_stride: 32 (no dilation), 16 (dilated ``layer4``) or 8 (dilated ``layer3`` and
            ``layer4``).
        include_top: keep ``avgpool`` and ``fc``.
        kwargs: further ``ResNet`` arguments (``num_classes``, ``zero_init_residual``, or
            ``replace_stride_with_dilation`` in place of ``output_stride``).
    """
    return _build(BasicBlock, (2, 2, 2, 2), output_stride, include_top, **kwargs)


def resnet34(output_stride: int = 32, include_top: bool = True, **kwargs: object) -> ResNet:
    """ResNet-34 (21,797,672 parameters with ``fc``), randomly initialised. See ``resnet18``."""
    return _build(BasicBlock, (3, 4, 6, 3), output_stride, include_top, **kwargs)


def resnet50(output_stride: int = 32, include_top: bool = True, **kwargs: object) -> ResNet:
    """ResNet-50 (25,557,032 parameters with ``fc``), randomly initialised. See ``resnet18``."""
    return _build(Bottleneck, (3, 4, 6, 3), output_stride, include_top, **kwargs)


def resnet101(output_stride: int = 32, include_top: bool = True, **kwargs: object) -> ResNet:
    """ResNet-101 (44,549,160 parameters with ``fc``), randomly initialised. See ``resnet18``."""
    return _build(Bottleneck, (3, 4, 23, 3), output_stride, include_top, **kwargs)
