"""Prototype heads: how a head pools class prototypes and scores query features against them.

A head never runs the encoder. The segmenter calls it once per rater and class with features that
were computed once per image, so extra raters cost only pooling and scoring.
"""

from __future__ import annotations

import torch
from torch import nn

from japc.networks.alp import class_prototypes, combine_prototype_scores, prototype_scores

__all__ = ["PrototypeHead", "ALPNetHead"]


class PrototypeHead(nn.Module):
    """Interface of a prototype head.

    Attributes:
        query_dependent: True when prototypes depend on the query features, so they cannot be
            pooled once per support and reused for every query.
    """

    query_dependent = False
    scale = 20.0

    def prototypes(
        self,
        support_features: torch.Tensor,
        mask: torch.Tensor,
        foreground: bool,
        query_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pool the prototypes of one class.

        Args:
            support_features: ``[S, C, h, w]``.
            mask: soft class mask at feature size ``[S, 1, h, w]``.
            foreground: True for the foreground class, False for the background.
            query_features: ``[Q, C, h, w]``, for heads whose prototypes depend on the query.

        Returns:
            Prototypes ``[N, C]`` (``N = 0`` for an empty mask).
        """
        raise NotImplementedError

    def score_groups(self, query_features: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
        """Score query features against several prototype groups (one group = one class logit).

        Args:
            query_features: ``[Q, C, h, w]``.
            groups: G prototype tensors ``[N_g, C]``.

        Returns:
            Logits ``[Q, G, h, w]``.
        """
        counts = [group.shape[0] for group in groups]
        scores = prototype_scores(query_features, torch.cat(groups, dim=0), self.scale)
        logits = [combine_prototype_scores(part) for part in torch.split(scores, counts, dim=1)]
        return torch.stack(logits, dim=1)


class ALPNetHead(PrototypeHead):
    """SSL-ALPNet head: adaptive local prototype pooling and the scaled cosine classifier.

    Args:
        train_window: pooling window in training (feature pixels).
        test_window: pooling window in evaluation mode.
        threshold: minimum pooled mask fraction of a local prototype.
        scale: cosine similarity multiplier.
    """

    def __init__(
        self, train_window: int = 4, test_window: int = 2, threshold: float = 0.95, scale: float = 20.0
    ) -> None:
        super().__init__()
        self.train_window = train_window
        self.test_window = test_window
        self.threshold = threshold
        self.scale = scale

    @property
    def window(self) -> int:
        """Pooling window of the current mode (training or evaluation)."""
        return self.train_window if self.training else self.test_window

    def prototypes(
        self,
        support_features: torch.Tensor,
        mask: torch.Tensor,
        foreground: bool,
        query_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return class_prototypes(support_features, mask, self.window, self.threshold, use_global=foreground)
