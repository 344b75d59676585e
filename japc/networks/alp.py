"""Adaptive local prototype pooling (ALP) and the cosine prototype classifier of SSL-ALPNet.

Facts from Ouyang et al., "Self-Supervised Learning for Few-Shot Medical Image Segmentation",
IEEE TMI 41(7), 2022. Features and masks are average-pooled with a window (4 x 4 in training,
2 x 2 at test time), and every window whose pooled mask fraction exceeds 0.95 gives a local
prototype. The background uses local prototypes only; the foreground adds one global
masked-average prototype. Query pixels are scored by ``20 * cos(feature, prototype)`` and the
scores of several prototypes of one class are combined with softmax weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "EMPTY_CLASS_LOGIT",
    "masked_average_prototype",
    "local_prototypes",
    "class_prototypes",
    "prototype_scores",
    "combine_prototype_scores",
    "resize_masks",
    "MASK_RESIZE_MODES",
]

#: Logit given to a class whose support mask is empty. It lies below every scaled cosine score
#: for scales up to 100, so the class is never predicted while the other class has prototypes,
#: and a finite value keeps softmax and cross-entropy free of NaN.
EMPTY_CLASS_LOGIT = -100.0

#: Added to the mask sum of a masked average, as in the reference implementation.
MASK_SUM_EPS = 1e-5


MASK_RESIZE_MODES = ("bilinear", "area")


def resize_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize soft or binary masks to the feature size.

    ``bilinear`` is the reference implementation's choice. Downsampling by the output stride
    then samples the mask at one point per feature pixel, so a rater outline that differs by a
    few pixels often gives the same feature-size mask. ``area`` averages every covered pixel
    and keeps the covered fraction, so small rater differences survive.

    Args:
        masks: masks ``[B, K, H, W]`` with values in [0, 1].
        size: target ``(h, w)``, usually the encoder's feature size.
        mode: ``bilinear`` or ``area``.

    Returns:
        Soft masks ``[B, K, h, w]``.
    """
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if mode == "area":
        return F.interpolate(masks, size=size, mode="area")
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


def masked_average_prototype(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pool one global prototype: ``sum(f * m) / (sum(m) + 1e-5)`` over all shots and pixels.

    Args:
        features: support features ``[S, C, h, w]``.
        mask: soft mask at feature size ``[S, 1, h, w]``.

    Returns:
        Prototype ``[1, C]``; a zero vector when the mask is empty.
    """
    weighted = (features * mask).sum(dim=(0, 2, 3))
    return (weighted / (mask.sum() + MASK_SUM_EPS)).unsqueeze(0)


def local_prototypes(
    features: torch.Tensor, mask: torch.Tensor, window: int, threshold: float = 0.95
) -> torch.Tensor:
    """Pool local prototypes from the windows that the mask covers by more than ``threshold``.

    Windows do not overlap (stride = window). A window larger than the feature map shrinks to
    the feature map's smaller side.

    Args:
        features: support features ``[S, C, h, w]``.
        mask: soft mask at feature size ``[S, 1, h, w]``.
        window: pooling window side in feature pixels.
        threshold: minimum pooled mask fraction for a window to yield a prototype.

    Returns:
        Prototypes ``[N, C]``, possibly with ``N = 0``.
    """
    window = max(1, min(window, features.shape[-2], features.shape[-1]))
    pooled_features = F.avg_pool2d(features, kernel_size=window)
    pooled_mask = F.avg_pool2d(mask, kernel_size=window)
    selected = pooled_mask[:, 0] > threshold
    return pooled_features.permute(0, 2, 3, 1)[selected]


def class_prototypes(
    features: torch.Tensor,
    mask: torch.Tensor,
    window: int,
    threshold: float = 0.95,
    use_global: bool = True,
) -> torch.Tensor:
    """Build the prototypes of one class (background or foreground) with ALP.

    The foreground (``use_global=True``) gets its local prototypes plus the global one. The
    background (``use_global=False``) gets local prototypes only and falls back to the global
    prototype when no window passes, so that a thin background still has a prototype.

    Args:
        features: support features ``[S, C, h, w]``.
        mask: soft class mask at feature size ``[S, 1, h, w]``.
        window: pooling window side in feature pixels.
        threshold: minimum pooled mask fraction of a local prototype.
        use_global: add the global masked-average prototype to the local ones.

    Returns:
        Prototypes ``[N, C]``; ``N = 0`` only when the mask is empty.
    """
    if float(mask.sum()) <= 0.0:
        return features.new_zeros((0, features.shape[1]))
    local = local_prototypes(features, mask, window, threshold)
    if use_global or local.shape[0] == 0:
        return torch.cat([local, masked_average_prototype(features, mask)], dim=0)
    return local


def prototype_scores(features: torch.Tensor, prototypes: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """Score every feature pixel against every prototype with a scaled cosine similarity.

    Args:
        features: query features ``[Q, C, h, w]``.
        prototypes: prototypes ``[N, C]``.
        scale: multiplier of the cosine (20 in SSL-ALPNet).

    Returns:
        Scores ``[Q, N, h, w]`` in ``[-scale, scale]``.
    """
    normalised_features = F.normalize(features, dim=1, eps=1e-8)
    normalised_prototypes = F.normalize(prototypes, dim=1, eps=1e-8)
    return scale * torch.einsum("qchw,nc->qnhw", normalised_features, normalised_prototypes)


def combine_prototype_scores(scores: torch.Tensor) -> torch.Tensor:
    """Combine the scores of several prototypes of one class: ``sum_k softmax_k(s_k) * s_k``.

    Args:
        scores: scores of one class's prototypes ``[Q, N, h, w]``.

    Returns:
        Class logit ``[Q, h, w]``; ``EMPTY_CLASS_LOGIT`` everywhere when ``N = 0``.
    """
    if scores.shape[1] == 0:
        return scores.new_full((scores.shape[0], *scores.shape[2:]), EMPTY_CLASS_LOGIT)
    weights = torch.softmax(scores, dim=1)
    return (weights * scores).sum(dim=1)
