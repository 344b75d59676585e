"""Few-shot multi-rater segmenter: shapes, encoder calls, empty raters, losses."""

from __future__ import annotations

import torch
from torch import nn

from japc.networks.alp import EMPTY_CLASS_LOGIT
from japc.networks.losses import rater_cross_entropy
from tests.networks.test_calibration import _episode, _segmenter


def test_logits_shape_is_query_rater_class_height_width() -> None:
    support, masks, query = _episode(num_raters=3)
    logits = _segmenter("attention")(support, masks, query)
    assert logits.shape == (2, 3, 2, 32, 32)
    assert torch.isfinite(logits).all()


def test_encoder_runs_once_per_image_whatever_raters() -> None:
    for raters in (1, 7):
        model = _segmenter("attention")
        support, _, query = _episode()
        masks = torch.zeros(1, raters, 32, 32)
        masks[..., 8:20, 8:20] = 1.0
        model(support, masks, query)
        assert model.encoder.calls == [3]


def test_identical_raters_give_identical_predictions() -> None:
    support, masks, query = _episode(num_raters=1)
    model = _segmenter("none")
    single = model(support, masks, query)
    repeated = model(support, masks.repeat(1, 4, 1, 1), query)
    for r in range(4):
        assert torch.allclose(repeated[:, r], single[:, 0], atol=1e-5)


def test_empty_rater_mask_predicts_no_foreground() -> None:
    support, masks, query = _episode(num_raters=2)
    masks[:, 1] = 0.0
    logits = _segmenter("attention")(support, masks, query)
    assert torch.all(logits[:, 1, 1] == EMPTY_CLASS_LOGIT)
    assert (logits[:, 1].argmax(dim=1) == 0).all()
    assert not torch.isnan(logits).any()


def test_nested_rater_masks_give_nested_area_order() -> None:
    """A support whose query is the support image: a larger rater mask predicts a larger area."""
    torch.manual_seed(0)
    model = _segmenter("none")
    image = torch.zeros(1, 1, 32, 32)
    image[..., 4:28, 4:28] = 1.0
    image = image + 0.05 * torch.rand(1, 1, 32, 32)
    masks = torch.zeros(1, 2, 32, 32)
    masks[:, 0, 8:16, 8:16] = 1.0
    masks[:, 1, 4:28, 4:28] = 1.0
    with torch.no_grad():
        predicted = model(image, masks, image).argmax(dim=2)
    assert predicted[0, 1].sum() > predicted[0, 0].sum()


def test_rater_cross_entropy_is_mean_of_weighted_terms() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 2, 4, 4)
    masks = (torch.rand(2, 3, 4, 4) > 0.5).float()
    weights = torch.tensor([0.05, 1.0])
    expected = torch.stack(
        [nn.functional.cross_entropy(logits[:, r], masks[:, r].long(), weight=weights) for r in range(3)]
    ).mean()
    assert torch.allclose(rater_cross_entropy(logits, masks, (0.05, 1.0)), expected)


def test_alignment_loss_is_finite_and_backpropagates() -> None:
    support, masks, query = _episode(num_raters=3)
    model = _segmenter("attention").train()
    output = model.run_episode(support, masks, query[:1])
    loss = model.alignment_loss(output, masks)
    assert torch.isfinite(loss)
    assert loss.item() > 0.0
    loss.backward()
    assert model.encoder.conv.weight.grad is not None
    assert model.encoder.conv.weight.grad.abs().sum() > 0


def test_alignment_loss_zero_when_every_prediction_empty() -> None:
    support, masks, query = _episode(num_raters=2)
    model = _segmenter("none")
    output = model.run_episode(support, masks, query[:1])
    output.logits = output.logits.clone()
    output.logits[:, :, 0] = 10.0
    output.logits[:, :, 1] = -10.0
    assert model.alignment_loss(output, masks).item() == 0.0
