"""Support-slice selection and query chunk assignment of the evaluation protocol."""

from __future__ import annotations

import numpy as np
import torch

from japc.pipeline.protocol import assign_chunks, slices_with_class, support_slice_indices


def test_support_slices_at_one_sixth_half_five_sixths() -> None:
    class_slices = np.arange(10, 22)  # 12 slices
    # positions 12/6 = 2, 12/2 = 6, 12*5/6 = 10 -> slices 12, 16, 20
    assert support_slice_indices(class_slices, num_chunks=3) == [[12], [16], [20]]


def test_support_slices_of_short_range_stay_inside() -> None:
    assert support_slice_indices(np.array([5]), num_chunks=3) == [[5], [5], [5]]
    assert support_slice_indices(np.array([3, 4]), num_chunks=3) == [[3], [4], [4]]


def test_support_slices_absent_class() -> None:
    assert support_slice_indices(np.array([], dtype=int), num_chunks=3) == [[], [], []]


def test_several_shots_per_chunk_stay_in_their_chunk() -> None:
    chunks = support_slice_indices(np.arange(0, 30), num_chunks=3, shots=2)
    assert chunks == [[2, 7], [12, 17], [22, 27]]


def test_chunk_assignment_splits_range_in_thirds() -> None:
    mapping = assign_chunks(4, 12, num_chunks=3)  # 9 slices
    assert [mapping[z] for z in range(4, 13)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert assign_chunks(7, 7) == {7: 0}


def test_slices_with_class_uses_any_rater() -> None:
    masks = torch.zeros(2, 4, 4, 6, dtype=torch.bool)
    masks[0, 1, 1, 2] = True
    masks[1, 2, 2, 4] = True
    assert slices_with_class(masks).tolist() == [2, 4]
