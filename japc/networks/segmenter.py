"""Few-shot multi-rater segmenter: encoder, prototype head and rater prototype calibration.

Shapes: support images ``[S, 1, H, W]``, support masks ``[S, R, H, W]`` (binary, one episode
class), query images ``[Q, 1, H, W]``, logits ``[Q, R, 2, H, W]`` (channel 0 background,
channel 1 foreground). The encoder runs once per image whatever R is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from japc.errors import ConfigError
from japc.networks.alp import MASK_RESIZE_MODES, resize_masks
from japc.networks.calibration import build_calibration
from japc.networks.heads import PrototypeHead

__all__ = ["EpisodeOutput", "FewShotSegmenter"]


@dataclass
class EpisodeOutput:
    """Result of one episode.

    Attributes:
        logits: ``[Q, R, 2, H, W]``.
        calibration_loss: scalar tensor, background and foreground losses summed.
        support_features: ``[S, C, h, w]``.
        query_features: ``[Q, C, h, w]``.
    """

    logits: torch.Tensor
    calibration_loss: torch.Tensor
    support_features: torch.Tensor
    query_features: torch.Tensor


class FewShotSegmenter(nn.Module):
    """Prototype network that returns one segmentation per rater of the support set.

    Args:
        encoder: module mapping ``[B, 1, H, W]`` to features ``[B, C, h, w]``.
        head: prototype head (ALPNet or DSPNet).
        calibration: ``attention``, ``gate`` or ``none``.
        feature_channels: C, the encoder's output channels.
        attention_dim: query/key dimension of the calibration module.
        mask_resize: how support masks shrink to the feature size, ``bilinear`` (reference
            implementation) or ``area`` (covered fraction, see :func:`resize_masks`).
        calibration_zero_init: start the attention calibration as the identity (``Wv = 0``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: PrototypeHead,
        calibration: str = "attention",
        feature_channels: int = 256,
        attention_dim: int = 64,
        mask_resize: str = "bilinear",
        calibration_zero_init: bool = True,
    ) -> None:
        super().__init__()
        if mask_resize not in MASK_RESIZE_MODES:
            raise ConfigError(f"Unknown mask resize mode {mask_resize!r}; valid modes are {', '.join(MASK_RESIZE_MODES)}.")
        self.mask_resize = mask_resize
        self.encoder = encoder
        self.head = head
        self.calibration_mode = calibration
        self.calibration = build_calibration(calibration, feature_channels, attention_dim, calibration_zero_init)
        # Stage 1 of the two-stage schedule trains the base network with calibration off.
        self.calibration_enabled = calibration != "none"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Compute features ``[B, C, h, w]`` of grey images ``[B, 1, H, W]``."""
        return self.encoder(images)

    def forward(
        self, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        """Segment the query images once per rater; returns logits ``[Q, R, 2, H, W]``."""
        return self.run_episode(support_images, support_masks, query_images).logits

    def run_episode(
        self, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor
    ) -> EpisodeOutput:
        """Encode support and query images in one batch, then segment the queries per rater."""
        num_support = support_images.shape[0]
        features = self.encode(torch.cat([support_images, query_images], dim=0))
        support_features, query_features = features[:num_support], features[num_support:]
        logits, calibration_loss = self.segment_features(
            support_features, support_masks, query_features, tuple(query_images.shape[-2:])
        )
        return EpisodeOutput(logits, calibration_loss, support_features, query_features)

    def segment_features(
        self,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
        query_features: torch.Tensor,
        image_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment precomputed query features with prototypes from precomputed support features.

        Args:
            support_features: ``[S, C, h, w]``.
            support_masks: ``[S, R, H, W]`` binary or soft masks.
            query_features: ``[Q, C, h, w]``.
            image_size: ``(H, W)`` of the returned logits.

        Returns:
            Logits ``[Q, R, 2, H, W]`` and the calibration loss (scalar, the mean over queries
            when prototypes depend on the query).
        """
        if self.head.query_dependent and query_features.shape[0] > 1:
            results = [
                self.segment_features(support_features, support_masks, query_features[q : q + 1], image_size)
                for q in range(query_features.shape[0])
            ]
            return torch.cat([r[0] for r in results]), torch.stack([r[1] for r in results]).mean()
        groups, calibration_loss = self.rater_prototypes(support_features, support_masks, query_features)
        return self.score(query_features, groups, image_size), calibration_loss

    def rater_prototypes(
        self,
        support_features: torch.Tensor,
        support_masks: torch.Tensor,
        query_features: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Pool and calibrate the background and foreground prototypes of every rater.

        Heads whose prototypes do not depend on the query (``head.query_dependent`` is False)
        accept ``query_features=None``, so evaluation can reuse one support's prototypes for
        every query.

        Args:
            support_features: ``[S, C, h, w]``.
            support_masks: ``[S, R, H, W]`` binary or soft masks.
            query_features: ``[Q, C, h, w]`` or None.

        Returns:
            ``2 R`` prototype tensors ``[N, C]`` ordered (rater 0 background, rater 0
            foreground, rater 1 background, ...) and the calibration loss (scalar).
        """
        num_raters = support_masks.shape[1]
        masks = resize_masks(
            support_masks.to(support_features.dtype), tuple(support_features.shape[-2:]), self.mask_resize
        )
        calibration_loss = support_features.new_zeros(())
        per_class = {}
        for foreground in (False, True):
            class_masks = masks if foreground else 1.0 - masks
            prototypes = [
                self.head.prototypes(support_features, class_masks[:, r : r + 1], foreground, query_features)
                for r in range(num_raters)
            ]
            if self.calibration_enabled:
                consensus = self._consensus_prototype(support_features, class_masks, foreground, query_features)
                prototypes, loss = self.calibration(prototypes, consensus)
                calibration_loss = calibration_loss + loss
            per_class[foreground] = prototypes

        groups: list[torch.Tensor] = []
        for r in range(num_raters):
            groups.extend([per_class[False][r], per_class[True][r]])
        return groups, calibration_loss

    def score(self, query_features: torch.Tensor, groups: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Score query features ``[Q, C, h, w]`` against rater prototype groups; returns ``[Q, R, 2, H, W]``."""
        logits = self.head.score_groups(query_features, groups)
        logits = F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
        return logits.reshape(logits.shape[0], len(groups) // 2, 2, *image_size)

    def _consensus_prototype(
        self,
        support_features: torch.Tensor,
        class_masks: torch.Tensor,
        foreground: bool,
        query_features: torch.Tensor | None,
    ) -> torch.Tensor:
        """Pool the consensus prototype ``[C]``: the mean of the prototypes of the mean mask."""
        consensus_mask = class_masks.mean(dim=1, keepdim=True)
        prototypes = self.head.prototypes(support_features, consensus_mask, foreground, query_features)
        if prototypes.shape[0] == 0:
            return support_features.new_zeros(support_features.shape[1])
        return prototypes.mean(dim=0)

    def alignment_loss(self, output: EpisodeOutput, support_masks: torch.Tensor) -> torch.Tensor:
        """Compute the PANet-style alignment loss, per rater, with calibrated prototypes.

        Prototypes pooled from the query features with the query's predicted masks segment the
        support images. The loss is the cross-entropy against the support masks, averaged over
        the raters whose predicted foreground and background are both non-empty. A rater with an
        empty predicted class has no prototype for it, and the reference implementation skips
        such raters too.

        Args:
            output: the episode's forward result.
            support_masks: ``[S, R, H, W]`` binary masks.

        Returns:
            Scalar loss (0 when every rater's prediction is empty).
        """
        predicted = (output.logits[:, :, 1] > output.logits[:, :, 0]).to(output.query_features.dtype)
        foreground_pixels = predicted.flatten(2).sum(dim=-1).sum(dim=0)
        valid = (foreground_pixels > 0) & (foreground_pixels < predicted[:, 0].numel())
        if not bool(valid.any()):
            return output.logits.new_zeros(())
        support_logits, _ = self.segment_features(
            output.query_features, predicted, output.support_features, tuple(support_masks.shape[-2:])
        )
        targets = support_masks.long()
        losses = [
            F.cross_entropy(support_logits[:, r], targets[:, r]) for r in range(support_masks.shape[1]) if valid[r]
        ]
        return torch.stack(losses).mean()
