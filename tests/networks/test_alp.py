"""Adaptive local prototype pooling and the cosine classifier on hand-built features and masks."""

from __future__ import annotations

import math

import pytest
import torch

from japc.networks.alp import (
    EMPTY_CLASS_LOGIT,
    class_prototypes,
    combine_prototype_scores,
    local_prototypes,
    masked_average_prototype,
    prototype_scores,
)


def _features() -> torch.Tensor:
    """Two channels on a 4x4 map: channel 0 = 10*row + col, channel 1 = 1."""
    rows = torch.arange(4).view(4, 1).expand(4, 4).float()
    cols = torch.arange(4).view(1, 4).expand(4, 4).float()
    return torch.stack([10 * rows + cols, torch.ones(4, 4)]).unsqueeze(0)


def test_local_prototypes_take_only_covered_windows() -> None:
    features = _features()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1.0  # top-left window fully covered
    mask[..., 2:, 2:] = 1.0
    mask[..., 3, 3] = 0.0  # bottom-right window covered at 0.75 < 0.95
    prototypes = local_prototypes(features, mask, window=2, threshold=0.95)
    assert prototypes.shape == (1, 2)
    # mean of 0, 1, 10, 11
    assert torch.allclose(prototypes[0], torch.tensor([5.5, 1.0]))


def test_global_prototype_is_masked_average() -> None:
    features = _features()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1.0
    mask[..., 3, 3] = 0.5
    prototype = masked_average_prototype(features, mask)
    expected_channel0 = (0.0 * 1.0 + 33.0 * 0.5) / (1.5 + 1e-5)
    assert prototype.shape == (1, 2)
    assert prototype[0, 0].item() == pytest.approx(expected_channel0, rel=1e-6)
    assert prototype[0, 1].item() == pytest.approx(1.5 / (1.5 + 1e-5), rel=1e-6)


def test_foreground_adds_global_to_local() -> None:
    features = _features()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1.0  # two windows covered
    prototypes = class_prototypes(features, mask, window=2, use_global=True)
    assert prototypes.shape == (3, 2)
    assert torch.allclose(prototypes[0], torch.tensor([5.5, 1.0]))
    assert torch.allclose(prototypes[1], torch.tensor([7.5, 1.0]))
    assert torch.allclose(prototypes[2], masked_average_prototype(features, mask)[0])


def test_background_uses_local_only_when_windows_pass() -> None:
    features = _features()
    mask = torch.ones(1, 1, 4, 4)
    prototypes = class_prototypes(features, mask, window=2, use_global=False)
    assert prototypes.shape == (4, 2)


def test_global_fallback_when_no_window_passes() -> None:
    features = _features()
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1, 1] = 1.0  # a single pixel: no 2x2 window passes
    for use_global in (True, False):
        prototypes = class_prototypes(features, mask, window=2, use_global=use_global)
        assert prototypes.shape == (1, 2)
        assert torch.allclose(prototypes[0], torch.tensor([11.0, 1.0]), atol=1e-3)


def test_empty_mask_gives_no_prototype_and_no_nan() -> None:
    features = _features()
    prototypes = class_prototypes(features, torch.zeros(1, 1, 4, 4), window=2)
    assert prototypes.shape == (0, 2)
    logits = combine_prototype_scores(prototype_scores(features, prototypes))
    assert logits.shape == (1, 4, 4)
    assert torch.all(logits == EMPTY_CLASS_LOGIT)
    assert not torch.isnan(logits).any()


def test_window_larger_than_map_shrinks() -> None:
    features = _features()
    prototypes = local_prototypes(features, torch.ones(1, 1, 4, 4), window=8)
    assert prototypes.shape == (1, 2)
    assert torch.allclose(prototypes[0], features.mean(dim=(0, 2, 3)))


def test_cosine_scores_are_scaled_cosines() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]]).t().reshape(1, 2, 2, 2)
    prototype = torch.tensor([[2.0, 0.0]])
    scores = prototype_scores(features, prototype, scale=20.0)[0, 0].flatten()
    expected = torch.tensor([20.0, 0.0, -20.0, 20.0 / math.sqrt(2.0)])
    assert torch.allclose(scores, expected, atol=1e-5)


def test_scores_ignore_prototype_scale() -> None:
    features = torch.randn(2, 8, 5, 5)
    prototypes = torch.randn(3, 8)
    assert torch.allclose(prototype_scores(features, prototypes), prototype_scores(features, 7.5 * prototypes), atol=1e-5)


def test_combination_is_softmax_weighted_sum() -> None:
    scores = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    weights = torch.softmax(torch.tensor([2.0, -1.0]), dim=0)
    expected = float((weights * torch.tensor([2.0, -1.0])).sum())
    assert combine_prototype_scores(scores).item() == pytest.approx(expected, rel=1e-6)
    single = torch.tensor([4.0]).view(1, 1, 1, 1)
    assert combine_prototype_scores(single).item() == pytest.approx(4.0)
