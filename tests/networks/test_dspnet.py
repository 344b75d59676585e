"""DSPNet head: channel refinement, seeds, soft k-means, and JAPC plugged in unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from japc.networks.dspnet import DSPNetHead, channel_band_matrix, farthest_point_seeds, soft_kmeans
from japc.networks.segmenter import FewShotSegmenter
from tests.networks.test_calibration import PoolingEncoder, _episode


def _segmenter(mode: str) -> FewShotSegmenter:
    torch.manual_seed(0)
    return FewShotSegmenter(
        PoolingEncoder(16), DSPNetHead(channels=16), calibration=mode, feature_channels=16, attention_dim=8
    ).eval()


def test_band_matrix_rows() -> None:
    matrix = channel_band_matrix(5, 0.3, 0.8, 0.3)
    assert torch.equal(matrix[0], torch.tensor([1.0, 0, 0, 0, 0]))
    assert torch.equal(matrix[4], torch.tensor([0, 0, 0, 0, 1.0]))
    assert torch.allclose(matrix[2], torch.tensor([0, 0.3, 0.8, 0.3, 0]))


def test_channel_refinement_formula() -> None:
    head = DSPNetHead(channels=4, alpha=0.2)
    pooled = torch.randn(6, 4)
    features = pooled.t()
    affinity = torch.softmax(features @ features.t(), dim=1)
    band = channel_band_matrix(4, 1.0, 1.0, 1.0)
    expected = (((1 + 0.2 * band * affinity) * channel_band_matrix(4, 0.3, 0.8, 0.3)) @ features).t()
    assert torch.allclose(head.refine_channels(pooled), expected, atol=1e-6)


def test_channel_refinement_is_identity_without_affinity_and_band() -> None:
    head = DSPNetHead(channels=4, alpha=0.0)
    with torch.no_grad():
        head.channel_weights.copy_(torch.eye(4))
    pooled = torch.randn(6, 4)
    assert torch.allclose(head.refine_channels(pooled), pooled, atol=1e-6)


def test_seeds_lie_in_mask_and_spread() -> None:
    mask = torch.zeros(10, 10)
    mask[1:3, 1:3] = 1.0
    mask[7:9, 7:9] = 1.0
    seeds = farthest_point_seeds(mask, max_seeds=2)
    assert seeds.shape == (2, 2)
    for row, col in seeds.long().tolist():
        assert mask[row, col] == 1.0
    # the two seeds fall in different blobs
    assert abs(seeds[0, 0] - seeds[1, 0]) >= 4
    assert farthest_point_seeds(mask, max_seeds=20).shape == (8, 2)
    assert farthest_point_seeds(torch.zeros(4, 4)).shape == (0, 2)


def test_soft_kmeans_finds_separated_groups() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(30, 3, generator=generator) * 0.1 + torch.tensor([0.0, 0.0, 0.0])
    second = torch.randn(30, 3, generator=generator) * 0.1 + torch.tensor([40.0, 40.0, 0.0])
    points = torch.cat([first, second])
    centres = soft_kmeans(points, torch.stack([first[0], second[0]]), iterations=10)
    assert torch.allclose(centres[0], first.mean(0), atol=0.2)
    assert torch.allclose(centres[1], second.mean(0), atol=0.2)


def test_batched_queries_equal_single_queries() -> None:
    support, masks, query = _episode(num_raters=2)
    model = _segmenter("attention")
    with torch.no_grad():
        batched = model(support, masks, query)
        singles = torch.cat([model(support, masks, query[q : q + 1]) for q in range(query.shape[0])])
    assert torch.allclose(batched, singles, atol=1e-5)


def test_gate_unchanged_attention_changed_on_dspnet() -> None:
    support, masks, query = _episode()
    base = _segmenter("none")
    gate = _segmenter("gate")
    attention = _segmenter("attention")
    gate.load_state_dict(base.state_dict(), strict=False)
    attention.load_state_dict(base.state_dict(), strict=False)
    nn.init.normal_(attention.calibration.value.weight, std=0.5)
    with torch.no_grad():
        reference = base(support, masks, query)
        assert torch.allclose(gate(support, masks, query), reference, atol=1e-4)
        assert (attention(support, masks, query) - reference).abs().max().item() > 0.1


def test_dspnet_trains_on_cpu_without_nan() -> None:
    support, masks, query = _episode()
    model = _segmenter("attention").train()
    output = model.run_episode(support, masks, query[:1])
    loss = output.logits.logsumexp(dim=2).mean() + model.alignment_loss(output, masks) + output.calibration_loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.head.channel_weights.grad is not None
    assert torch.isfinite(model.head.channel_weights.grad).all()


def test_soft_mask_without_core_pixels_has_no_nan() -> None:
    head = DSPNetHead(channels=8).eval()
    features = torch.randn(1, 8, 6, 6)
    mask = torch.full((1, 1, 6, 6), 0.2)  # no pixel above 0.5, so no cluster seed
    prototypes = head.prototypes(features, mask, foreground=True, query_features=torch.randn(1, 8, 6, 6))
    assert prototypes.shape[1] == 8
    assert torch.isfinite(prototypes).all()


@pytest.mark.parametrize("mode", ["none", "gate", "attention"])
def test_logit_shape_for_each_calibration(mode: str) -> None:
    support, masks, query = _episode()
    with torch.no_grad():
        assert _segmenter(mode)(support, masks, query).shape == (2, 3, 2, 32, 32)


def test_query_refinement_computed_once_per_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    head = DSPNetHead(channels=8)
    support = torch.randn(1, 8, 6, 6)
    query = torch.randn(1, 8, 6, 6)
    masks = [torch.zeros(1, 1, 6, 6) for _ in range(3)]
    for r, mask in enumerate(masks):
        mask[..., 1 : 4 + r, 1 : 4 + r] = 1.0
    expected = [
        torch.cat([head.local_prototypes(support, m), head.global_prototype(support, m, query)]) for m in masks
    ]
    head._last_refinement = None

    calls = []
    original = head.query_refined
    monkeypatch.setattr(head, "query_refined", lambda s, q: calls.append(1) or original(s, q))
    reused = [head.prototypes(support, m, True, query) for m in masks]
    assert len(calls) == 1
    for got, want in zip(reused, expected):
        torch.testing.assert_close(got, want)

    other_query = torch.randn(1, 8, 6, 6)
    head.prototypes(support, masks[0], True, other_query)
    assert len(calls) == 2
