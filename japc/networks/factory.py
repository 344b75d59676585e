"""Build a :class:`FewShotSegmenter` from a model configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from japc.errors import ConfigError
from japc.networks.dspnet import DSPNetHead
from japc.networks.encoders import build_encoder
from japc.networks.heads import ALPNetHead, PrototypeHead
from japc.networks.segmenter import FewShotSegmenter

if TYPE_CHECKING:
    from japc.pipeline.config import ModelConfig

__all__ = ["HEAD_NAMES", "build_head", "build_segmenter"]

HEAD_NAMES = ("alpnet", "dspnet")


def build_head(config: ModelConfig) -> PrototypeHead:
    """Create the prototype head named by ``config.head``."""
    if config.head == "alpnet":
        return ALPNetHead(train_window=config.train_window, test_window=config.test_window)
    if config.head == "dspnet":
        return DSPNetHead(
            channels=config.feature_channels, train_window=config.train_window, test_window=config.test_window
        )
    raise ConfigError(f"Unknown prototype head {config.head!r}; valid heads are {', '.join(HEAD_NAMES)}.")


def build_segmenter(config: ModelConfig, pretrained: bool = True) -> FewShotSegmenter:
    """Create the segmenter; ``pretrained=False`` skips loading backbone weights (checkpoint follows)."""
    encoder = build_encoder(
        config.encoder,
        out_channels=config.feature_channels,
        output_stride=config.output_stride,
        pretrained=config.pretrained if pretrained else None,
    )
    return FewShotSegmenter(
        encoder,
        build_head(config),
        calibration=config.calibration,
        feature_channels=config.feature_channels,
        attention_dim=config.attention_dim,
        mask_resize=config.mask_resize,
        calibration_zero_init=config.calibration_init == "identity",
    )
