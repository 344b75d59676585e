"""Rater prototype calibration: identity, gate and joint attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from japc.errors import ConfigError
from japc.networks.calibration import (
    GateCalibration,
    IdentityCalibration,
    JointAttentionCalibration,
    build_calibration,
)
from japc.networks.heads import ALPNetHead
from japc.networks.segmenter import FewShotSegmenter


class PoolingEncoder(nn.Module):
    """Deterministic toy encoder: 3x3 convolution then 4x4 average pooling (output stride 4)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.calls: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.shape[0])
        return nn.functional.avg_pool2d(torch.relu(self.conv(images)) + 0.1 * self.conv(images), 4)


def _segmenter(mode: str, channels: int = 16) -> FewShotSegmenter:
    torch.manual_seed(0)
    return FewShotSegmenter(PoolingEncoder(channels), ALPNetHead(), calibration=mode, feature_channels=channels, attention_dim=8).eval()


def _episode(num_raters: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    support = torch.rand(1, 1, 32, 32, generator=generator)
    query = torch.rand(2, 1, 32, 32, generator=generator)
    masks = torch.zeros(1, num_raters, 32, 32)
    for r in range(num_raters):
        masks[:, r, 8 : 20 + 2 * r, 6 : 22 + 2 * r] = 1.0  # raters draw nested boxes of growing size
    return support, masks, query


def _prototype_sets(channels: int = 16) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    sets = [torch.randn(n, channels, generator=generator) for n in (2, 0, 3)]
    return sets, torch.randn(channels, generator=generator)


def test_identity_returns_inputs_and_zero_loss() -> None:
    sets, consensus = _prototype_sets()
    calibrated, loss = IdentityCalibration()(sets, consensus)
    assert [c.shape for c in calibrated] == [s.shape for s in sets]
    assert all(torch.equal(c, s) for c, s in zip(calibrated, sets))
    assert loss.item() == 0.0


def test_attention_is_identity_at_initialisation() -> None:
    sets, consensus = _prototype_sets()
    calibrated, loss = JointAttentionCalibration(16, attention_dim=8)(sets, consensus)
    assert all(torch.equal(c, s) for c, s in zip(calibrated, sets))
    assert loss.item() == 0.0


def test_attention_matches_formula() -> None:
    torch.manual_seed(3)
    module = JointAttentionCalibration(16, attention_dim=8, zero_init_values=False)
    sets, consensus = _prototype_sets()
    calibrated, loss = module(sets, consensus)
    stacked = torch.cat(sets)
    deviations = stacked - consensus
    q = stacked @ module.query.weight.t()
    k = deviations @ module.key.weight.t()
    v = deviations @ module.value.weight.t()
    expected = stacked + torch.softmax(q @ k.t() / math.sqrt(8), dim=-1) @ v
    assert torch.allclose(torch.cat(calibrated), expected, atol=1e-5)
    assert [c.shape[0] for c in calibrated] == [2, 0, 3]
    assert loss.item() == pytest.approx(float(((expected - stacked) ** 2).mean()), rel=1e-5)
    assert loss.item() > 0.0


def test_gate_scales_each_prototype_by_sigmoid() -> None:
    torch.manual_seed(4)
    module = GateCalibration(16, attention_dim=8)
    sets, consensus = _prototype_sets()
    calibrated, _ = module(sets, consensus)
    stacked = torch.cat(sets)
    scores = ((stacked @ module.query.weight.t()) * ((stacked - consensus) @ module.key.weight.t())).sum(-1)
    weights = torch.sigmoid(scores / math.sqrt(8)).unsqueeze(-1)
    assert torch.allclose(torch.cat(calibrated), weights * stacked, atol=1e-6)


def test_gate_leaves_predictions_unchanged_attention_changes_them() -> None:
    support, masks, query = _episode()
    base = _segmenter("none")
    gate = _segmenter("gate")
    attention = _segmenter("attention")
    gate.load_state_dict(base.state_dict(), strict=False)
    attention.load_state_dict(base.state_dict(), strict=False)
    nn.init.normal_(attention.calibration.value.weight, std=0.5)
    with torch.no_grad():
        base_logits = base(support, masks, query)
        gate_logits = gate(support, masks, query)
        attention_logits = attention(support, masks, query)
    assert torch.allclose(gate_logits, base_logits, atol=1e-4)
    assert not torch.allclose(attention_logits, base_logits, atol=1e-2)
    assert (attention_logits - base_logits).abs().max().item() > 0.1


def test_gate_changes_calibration_loss_only() -> None:
    support, masks, query = _episode()
    gate = _segmenter("gate")
    output = gate.run_episode(support, masks, query)
    assert output.calibration_loss.item() > 0.0


def test_disabled_calibration_has_zero_loss() -> None:
    support, masks, query = _episode()
    model = _segmenter("attention")
    nn.init.normal_(model.calibration.value.weight, std=0.5)
    model.calibration_enabled = False
    assert model.run_episode(support, masks, query).calibration_loss.item() == 0.0


def test_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(ConfigError, match="attention, gate, none"):
        build_calibration("cross", 16)


def test_random_initialisation_is_not_identity() -> None:
    torch.manual_seed(0)
    identity = JointAttentionCalibration(16, attention_dim=8)
    random_start = JointAttentionCalibration(16, attention_dim=8, zero_init_values=False)
    sets, consensus = _prototype_sets()
    assert identity(sets, consensus)[1].item() == 0.0
    assert random_start(sets, consensus)[1].item() > 0.0
    nn.init.normal_(identity.value.weight)
    identity.reset_parameters()
    assert torch.count_nonzero(identity.value.weight) == 0
