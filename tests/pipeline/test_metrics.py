"""Dice counts, scores and summary tables against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from japc.pipeline.metrics import dice_from_counts, dice_score, overlap_counts, summarize_dice


def test_dice_of_overlapping_squares() -> None:
    prediction = torch.zeros(10, 10, dtype=torch.bool)
    target = torch.zeros(10, 10, dtype=torch.bool)
    prediction[0:4, 0:4] = True  # 16 pixels
    target[2:6, 0:4] = True  # 16 pixels, 8 shared
    assert overlap_counts(prediction, target) == (8, 8, 8)
    assert dice_score(prediction, target) == pytest.approx(2 * 8 / (2 * 8 + 8 + 8))


def test_dice_sums_over_volume_not_slices() -> None:
    prediction = torch.zeros(4, 4, 2, dtype=torch.bool)
    target = torch.zeros(4, 4, 2, dtype=torch.bool)
    prediction[..., 0] = True  # 16 voxels on slice 0, correct
    target[..., 0] = True
    target[0, 0, 1] = True  # one voxel missed on slice 1
    # a mean of per-slice Dice would be (1 + 0) / 2; the 3D Dice is 32 / 33
    assert dice_score(prediction, target) == pytest.approx(32 / 33)


def test_dice_of_empty_masks() -> None:
    empty = torch.zeros(5, 5, dtype=torch.bool)
    full = torch.ones(5, 5, dtype=torch.bool)
    assert dice_score(empty, empty) == 1.0
    assert dice_score(full, empty) == 0.0
    assert dice_score(empty, full) == 0.0
    assert dice_from_counts(0, 0, 0) == 1.0


def test_summary_means_over_queries_then_supports() -> None:
    rows = [
        {"support": "s1", "query": "q1", "class": "a", "rater": "r1", "dice": 0.2},
        {"support": "s1", "query": "q2", "class": "a", "rater": "r1", "dice": 0.4},
        {"support": "s2", "query": "q1", "class": "a", "rater": "r1", "dice": 0.9},
        {"support": "s1", "query": "q1", "class": "a", "rater": "r2", "dice": 0.5},
        {"support": "s2", "query": "q1", "class": "a", "rater": "r2", "dice": 0.7},
        {"support": "s1", "query": "q1", "class": "b", "rater": "r1", "dice": 1.0},
        {"support": "s1", "query": "q1", "class": "b", "rater": "r2", "dice": 0.0},
    ]
    summary = summarize_dice(rows)
    # class a, rater r1: support s1 mean 0.3, support s2 0.9 -> 0.6
    assert summary["dice"]["a"]["r1"] == pytest.approx(0.6)
    assert summary["dice"]["a"]["r2"] == pytest.approx(0.6)
    assert summary["dice"]["b"]["r1"] == pytest.approx(1.0)
    assert summary["dice_class"]["a"] == pytest.approx(0.6)
    assert summary["dice_class"]["b"] == pytest.approx(0.5)
    assert summary["dice_rater"]["r1"] == pytest.approx(0.8)
    assert summary["dice_rater"]["r2"] == pytest.approx(0.3)
    assert summary["dice_mean"] == pytest.approx((0.6 + 0.6 + 1.0 + 0.0) / 4)
    assert summary["num_supports"] == 2
    assert summary["num_queries"] == 2
    # per-support Dice_m: s1 = mean(0.3, 0.5, 1.0, 0.0), s2 = mean(0.9, 0.7)
    assert summary["per_support"]["s1"] == pytest.approx(0.45)
    assert summary["per_support"]["s2"] == pytest.approx(0.8)
