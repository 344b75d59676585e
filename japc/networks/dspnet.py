"""DSPNet prototype head (detail self-refined prototypes), a second base for JAPC.

Facts from Tang et al., "Few-shot medical image segmentation with high-fidelity prototypes",
Medical Image Analysis 100, 2025 (DSPNet), and its released code:

- Local prototypes (background, and the foreground's local ones) come from average-pooled
  windows as in ALPNet, after a channel-structure refinement of the pooled features. For pooled
  features ``X`` ``[C, N]`` (all windows of the support), only the band of width one around the
  diagonal of the channel affinity ``softmax_rows(X X^T)`` is kept. The refined features are
  ``((1 + alpha * banded_affinity) * W) X``. The learnable ``W`` ``[C, C]`` starts as a band
  (0.3, 0.8, 0.3) whose first and last rows are those of the identity.
- The foreground's global prototype comes from support features refined by the query:
  each support pixel attends (softmax of cosine similarity) over the query pixels. Soft k-means
  (up to 5 seeds, 10 iterations, features plus pixel coordinates, without gradient) finds
  clusters of the foreground. Every cluster spreads over the support map with softmax weights
  over pixel positions, the result is added to the support features, and masked average pooling
  gives the global prototype.

Differences from the released code, each deliberate:

- In the query-guided refinement the released code takes the attention values from the
  support map at the query's pixel indices, which is only defined when both maps have the same
  size. Here the values are the query features the attention weights refer to.
- The released code places cluster seeds with a data-loader helper at image resolution. Here the
  seeds are picked at feature resolution by farthest-point sampling among the foreground pixels,
  starting from the pixel nearest the foreground centroid (up to 5 seeds, at most one per
  foreground pixel).
- The released code needs CUDA; this head runs on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from japc.networks.alp import masked_average_prototype
from japc.networks.heads import PrototypeHead

__all__ = ["DSPNetHead", "channel_band_matrix", "soft_kmeans", "farthest_point_seeds"]


def channel_band_matrix(channels: int, below: float, diagonal: float, above: float) -> torch.Tensor:
    """Return a ``[C, C]`` identity whose inner rows carry ``(below, diagonal, above)`` around the diagonal."""
    matrix = torch.eye(channels)
    for row in range(1, channels - 1):
        matrix[row, row - 1] = below
        matrix[row, row] = diagonal
        matrix[row, row + 1] = above
    return matrix


def farthest_point_seeds(mask: torch.Tensor, max_seeds: int = 5) -> torch.Tensor:
    """Pick up to ``max_seeds`` foreground pixels spread over a binary mask.

    Args:
        mask: binary mask ``[h, w]``.
        max_seeds: maximum number of seeds.

    Returns:
        Seed coordinates ``[K, 2]`` (row, column) as float, ``K = min(max_seeds, pixels)``.
    """
    points = torch.nonzero(mask > 0.5).float()
    if points.shape[0] == 0:
        return points
    centroid = points.mean(dim=0, keepdim=True)
    chosen = [int(torch.argmin(((points - centroid) ** 2).sum(dim=1)))]
    distances = ((points - points[chosen[0]]) ** 2).sum(dim=1)
    while len(chosen) < min(max_seeds, points.shape[0]):
        index = int(torch.argmax(distances))
        chosen.append(index)
        distances = torch.minimum(distances, ((points - points[index]) ** 2).sum(dim=1))
    return points[chosen]


def soft_kmeans(points: torch.Tensor, centres: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Soft k-means with DSPNet's association: ``exp(-sqrt(d_feature / 100 + d_space / 100))``.

    Each centre is the average of all points weighted by their association, normalised over the
    points. The last two coordinates of every point are its pixel position.

    Args:
        points: ``[P, C + 2]`` features with coordinates.
        centres: initial centres ``[K, C + 2]``.
        iterations: update steps.

    Returns:
        Centres ``[K, C + 2]``.
    """
    for _ in range(iterations):
        difference = (points.unsqueeze(1) - centres.unsqueeze(0)) ** 2  # [P, K, C + 2]
        distance = torch.sqrt(difference[..., :-2].sum(-1) / 100.0 + difference[..., -2:].sum(-1) / 100.0)
        association = torch.exp(-distance)
        association = association / association.sum(dim=0, keepdim=True).clamp_min(1e-12)
        centres = association.t() @ points
    return centres


class DSPNetHead(PrototypeHead):
    """DSPNet head: channel-refined local prototypes and a query- and cluster-refined global one.

    Args:
        channels: feature channels C (the learnable channel matrix is ``[C, C]``).
        train_window: pooling window in training (feature pixels).
        test_window: pooling window in evaluation mode.
        threshold: minimum pooled mask fraction of a local prototype.
        scale: cosine similarity multiplier.
        alpha: weight of the banded channel affinity (0.2 in DSPNet's released settings).
        max_seeds: maximum number of foreground clusters.
        kmeans_iterations: soft k-means steps.
    """

    query_dependent = True

    def __init__(
        self,
        channels: int = 256,
        train_window: int = 4,
        test_window: int = 2,
        threshold: float = 0.95,
        scale: float = 20.0,
        alpha: float = 0.2,
        max_seeds: int = 5,
        kmeans_iterations: int = 10,
    ) -> None:
        super().__init__()
        self.train_window = train_window
        self.test_window = test_window
        self.threshold = threshold
        self.scale = scale
        self.alpha = alpha
        self.max_seeds = max_seeds
        self.kmeans_iterations = kmeans_iterations
        self.channel_weights = nn.Parameter(channel_band_matrix(channels, 0.3, 0.8, 0.3))
        band = channel_band_matrix(channels, 1.0, 1.0, 1.0)
        self.register_buffer("band", band, persistent=False)
        # The last query-guided refinement with the tensors it was computed from. Every rater and
        # the JAPC consensus pool from the same support and query features, and the refinement
        # does not depend on the mask, so it is computed once per (support, query) pair.
        # NOTE: reuse is keyed on tensor identity, so features changed in place would get a stale result.
        self._last_refinement: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def window(self) -> int:
        """Pooling window of the current mode (training or evaluation)."""
        return self.train_window if self.training else self.test_window

    def refine_channels(self, pooled: torch.Tensor) -> torch.Tensor:
        """Refine pooled features ``[N, C]`` with the banded channel affinity; returns ``[N, C]``."""
        features = pooled.t()  # [C, N]
        affinity = torch.softmax(features @ features.t(), dim=1)
        weights = (1.0 + self.alpha * self.band * affinity) * self.channel_weights
        return (weights @ features).t()

    def local_prototypes(self, support_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool every window, refine channels over all windows, keep the covered windows; ``[N, C]``."""
        window = max(1, min(self.window, support_features.shape[-2], support_features.shape[-1]))
        pooled = F.avg_pool2d(support_features, kernel_size=window)
        pooled_mask = F.avg_pool2d(mask, kernel_size=window)
        refined = self.refine_channels(pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1]))
        return refined[pooled_mask.permute(0, 2, 3, 1).reshape(-1) > self.threshold]

    def query_refined(self, support_features: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
        """Add to every support pixel the query features it resembles; returns ``[S, C, h, w]``."""
        num_support, channels, height, width = support_features.shape
        support = support_features.flatten(2)  # [S, C, P]
        query = query_features.flatten(2).permute(1, 0, 2).reshape(channels, -1)  # [C, Q * P]
        similarity = torch.einsum(
            "scp,cq->spq", F.normalize(support, dim=1, eps=1e-5), F.normalize(query, dim=0, eps=1e-5)
        )
        attended = torch.einsum("spq,cq->scp", torch.softmax(similarity, dim=-1), query)
        return (support + attended).reshape(num_support, channels, height, width)

    def _query_refined_once(self, support_features: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
        """Compute :meth:`query_refined`, or reuse the last result for the same two tensor objects."""
        last = self._last_refinement
        if last is not None and last[0] is support_features and last[1] is query_features:
            return last[2]
        refined = self.query_refined(support_features, query_features)
        self._last_refinement = (support_features, query_features, refined)
        return refined

    def cluster_centres(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Soft k-means centres ``[K, C]`` of the foreground features (no gradient); K may be 0."""
        with torch.no_grad():
            height, width = features.shape[-2:]
            rows = torch.arange(height, device=features.device, dtype=features.dtype).view(height, 1).expand(height, width)
            cols = torch.arange(width, device=features.device, dtype=features.dtype).view(1, width).expand(height, width)
            selected = mask[:, 0] > 0.5  # [S, h, w]
            points = torch.cat(
                [features.permute(0, 2, 3, 1)[selected], torch.stack([rows, cols], -1).expand(features.shape[0], height, width, 2)[selected]],
                dim=1,
            )
            seeds = farthest_point_seeds(selected.any(dim=0).to(features.dtype), self.max_seeds)
            if seeds.shape[0] == 0:
                return features.new_zeros((0, features.shape[1]))
            initial = []
            for row, col in seeds.long().tolist():
                shot = int(torch.nonzero(selected[:, row, col])[0])
                initial.append(torch.cat([features[shot, :, row, col], seeds.new_tensor([row, col]).to(features.dtype)]))
            return soft_kmeans(points, torch.stack(initial), self.kmeans_iterations)[:, :-2]

    def global_prototype(
        self, support_features: torch.Tensor, mask: torch.Tensor, query_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Global foreground prototype ``[1, C]`` from query-refined and cluster-fused features."""
        refined = support_features if query_features is None else self._query_refined_once(support_features, query_features)
        centres = self.cluster_centres(support_features, mask)
        if centres.shape[0] == 0:
            centres = masked_average_prototype(refined, mask)
        scores = torch.einsum("schw,kc->skhw", refined, centres).flatten(2)  # [S, K, P]
        spread = torch.einsum("skp,kc->scp", torch.softmax(scores, dim=-1), centres)
        fused = support_features + spread.reshape_as(support_features)
        return masked_average_prototype(fused, mask)

    def prototypes(
        self,
        support_features: torch.Tensor,
        mask: torch.Tensor,
        foreground: bool,
        query_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if float(mask.sum()) <= 0.0:
            return support_features.new_zeros((0, support_features.shape[1]))
        local = self.local_prototypes(support_features, mask)
        if foreground or local.shape[0] == 0:
            global_prototype = (
                self.global_prototype(support_features, mask, query_features)
                if foreground
                else masked_average_prototype(support_features, mask)
            )
            return torch.cat([local, global_prototype], dim=0)
        return local
