"""Support-slice selection and query-slice assignment of the SSL-ALPNet evaluation protocol.

Among the support slices that contain the class, the slices at 1/6, 1/2 and 5/6 of that range
are the support slices (one per chunk for three chunks). A query slice is assigned to the chunk
in which it sits within the query's class z-range and is segmented with that chunk's support
slice. In the oracle variant the query's z-range comes from its ground truth; without the oracle
it is the whole volume.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["slices_with_class", "support_slice_indices", "assign_chunks"]


def slices_with_class(masks: torch.Tensor) -> np.ndarray:
    """Indices of the slices where any rater marks the class.

    Args:
        masks: binary masks ``[R, H, W, D]`` of one class.

    Returns:
        Sorted slice indices (int64).
    """
    present = masks.bool().flatten(0, -2).any(dim=0)
    return np.flatnonzero(present.cpu().numpy())


def support_slice_indices(class_slices: np.ndarray, num_chunks: int = 3, shots: int = 1) -> list[list[int]]:
    """Pick ``shots`` support slices per chunk from the slices containing the class.

    With one shot, chunk k takes the slice at relative position ``(k + 0.5) / num_chunks`` of the
    class range (1/6, 1/2, 5/6 for three chunks). With several shots, chunk k takes slices spread
    evenly over its own part of the range.

    Args:
        class_slices: sorted indices of the support slices that contain the class.
        num_chunks: number of chunks of the class range.
        shots: support slices per chunk.

    Returns:
        ``num_chunks`` lists of slice indices (an empty list for every chunk when the class is absent).
    """
    count = len(class_slices)
    if count == 0:
        return [[] for _ in range(num_chunks)]
    chunks = []
    for chunk in range(num_chunks):
        positions = [(chunk + (shot + 0.5) / shots) / num_chunks for shot in range(shots)]
        picks = sorted({int(class_slices[min(int(p * count), count - 1)]) for p in positions})
        chunks.append(picks)
    return chunks


def assign_chunks(first: int, last: int, num_chunks: int = 3) -> dict[int, int]:
    """Map each slice index in ``[first, last]`` to the chunk where it sits within that range."""
    length = last - first + 1
    return {z: min(int((z - first) * num_chunks / length), num_chunks - 1) for z in range(first, last + 1)}
