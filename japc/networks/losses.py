"""Losses of episodic training: per-rater weighted cross-entropy and the total objective."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["rater_cross_entropy", "LossTerms"]


def rater_cross_entropy(
    logits: torch.Tensor, masks: torch.Tensor, class_weights: tuple[float, float] | None = (0.05, 1.0)
) -> torch.Tensor:
    """Average over raters of the class-weighted pixel cross-entropy.

    Args:
        logits: ``[Q, R, 2, H, W]``.
        masks: binary targets ``[Q, R, H, W]``.
        class_weights: background and foreground weights (0.05 and 1.0 in SSL-ALPNet, which
            offsets the small foreground of superpixel pseudo-labels); None for no weighting.

    Returns:
        Scalar loss ``(1/R) sum_r CE(logits_r, masks_r)``.
    """
    weight = None if class_weights is None else logits.new_tensor(class_weights)
    targets = masks.long()
    per_rater = [F.cross_entropy(logits[:, r], targets[:, r], weight=weight) for r in range(logits.shape[1])]
    return torch.stack(per_rater).mean()


@dataclass
class LossTerms:
    """Loss terms of one training step (scalar tensors) and their sum."""

    segmentation: torch.Tensor
    alignment: torch.Tensor
    calibration: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """Objective ``L_seg + L_align + L_cal``."""
        return self.segmentation + self.alignment + self.calibration

    def as_floats(self) -> dict[str, float]:
        """Return the terms and the total as Python floats, for logging."""
        return {
            "loss": float(self.total.detach()),
            "segmentation": float(self.segmentation.detach()),
            "alignment": float(self.alignment.detach()),
            "calibration": float(self.calibration.detach()),
        }
