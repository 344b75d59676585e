"""Tests of the pseudo-style operations and RandPseudoStyled (japc.transforms.styles)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from japc.errors import ConfigError, InputImageError
from japc.transforms.styles import (
    STYLE_OPERATIONS,
    RandPseudoStyled,
    apply_style,
    blur_threshold,
    boundary_shift,
    closing,
    dilate,
    erode,
    fill_holes,
    opening,
    pseudo_style_masks,
    remove_small_components,
)


def _square(size: int = 32, start: int = 10, stop: int = 22) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[start:stop, start:stop] = True
    return mask


def _centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_erode_gives_smaller_subset(radius: int) -> None:
    mask = _square()
    eroded = erode(mask, radius)
    assert np.all(mask[eroded])
    assert eroded.sum() < mask.sum()
    assert eroded[15, 15]


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dilate_gives_larger_superset(radius: int) -> None:
    mask = _square()
    dilated = dilate(mask, radius)
    assert np.all(dilated[mask])
    assert dilated.sum() > mask.sum()
    assert dilated[15, 22 + radius - 1]
    assert not dilated[15, 22 + radius]


def test_erode_square_radius_one() -> None:
    assert np.array_equal(erode(_square(), 1), _square(start=11, stop=21))


def test_opening_removes_thin_protrusion() -> None:
    mask = _square()
    mask[15, 22:28] = True
    opened = opening(mask, 1)
    # The protrusion's root pixel survives because the square's edge pixel beside it survives
    # the erosion; the rest of the 1-pixel-wide line is removed. The disk of radius 1 is a
    # cross, so the square keeps everything but its four corner pixels.
    assert not opened[15, 23:28].any()
    assert np.all(mask[opened])
    assert opened.sum() == 12 * 12 - 4 + 1


def test_closing_fills_narrow_gap() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 6:15] = True
    mask[8:24, 16:26] = True
    closed = closing(mask, 1)
    assert closed[9:23, 15].all()
    assert np.all(closed[mask])


def test_closing_keeps_mask_at_image_edge() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[:, :5] = True
    assert np.array_equal(closing(mask, 3), mask)


def test_fill_holes_fills_interior_hole_only() -> None:
    mask = _square()
    mask[14:18, 14:18] = False
    mask[10:13, 20:22] = False
    filled = fill_holes(mask)
    assert filled[14:18, 14:18].all()
    assert not filled[10:13, 20:22].any()
    assert filled.sum() == mask.sum() + 16


def test_remove_small_components_by_size() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[1:3, 1:3] = True
    mask[10:13, 10:13] = True
    mask[20:26, 20:25] = True
    cleaned = remove_small_components(mask, 10)
    assert not cleaned[1:3, 1:3].any()
    assert not cleaned[10:13, 10:13].any()
    assert np.array_equal(cleaned[20:26, 20:25], mask[20:26, 20:25])
    assert cleaned.sum() == 30
    assert remove_small_components(mask, 9).sum() == 39


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_boundary_shift_right(radius: int) -> None:
    mask = _square()
    shifted = boundary_shift(mask, radius, angle=0.0)
    added = shifted & ~mask
    removed = mask & ~shifted
    assert added.any()
    assert removed.any()
    assert np.argwhere(added)[:, 1].min() >= 22
    assert np.argwhere(removed)[:, 1].max() < 10 + radius
    centre_before, centre_after = _centroid(mask), _centroid(shifted)
    assert centre_after[1] - centre_before[1] == pytest.approx(radius, abs=0.5)
    assert centre_after[0] == pytest.approx(centre_before[0], abs=0.5)
    assert abs(int(shifted.sum()) - int(mask.sum())) <= 0.1 * mask.sum()


def test_boundary_shift_down() -> None:
    mask = _square()
    shifted = boundary_shift(mask, 2, angle=90.0)
    assert _centroid(shifted)[0] - _centroid(mask)[0] == pytest.approx(2.0, abs=0.5)
    assert _centroid(shifted)[1] == pytest.approx(_centroid(mask)[1], abs=0.5)


def test_blur_threshold_rounds_corners() -> None:
    mask = _square()
    blurred = blur_threshold(mask, sigma=2.0)
    for corner in [(10, 10), (10, 21), (21, 10), (21, 21)]:
        assert not blurred[corner]
    assert blurred[15, 10]
    assert blurred[10, 15]
    assert blurred[15, 15]
    assert np.all(mask[blurred])


def test_apply_style_order() -> None:
    mask = _square()
    mask[15, 22:28] = True
    style = [["erode", {"radius": 1}], ["dilate", {"radius": 1}]]
    assert np.array_equal(apply_style(mask, style), opening(mask, 1))


def test_empty_result_falls_back() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[7:9, 7:9] = True
    result = apply_style(mask, [["erode", {"radius": 3}]])
    assert np.array_equal(result, mask)
    result = apply_style(mask, [["remove_small_components", {"min_size": 50}]])
    assert np.array_equal(result, mask)


def test_apply_style_unknown_operation() -> None:
    with pytest.raises(ConfigError, match="erode"):
        apply_style(_square(), [["melt", {}]])
    with pytest.raises(ConfigError, match="radius"):
        apply_style(_square(), [["erode", {"radius": 1, "depth": 2}]])


def _episode_mask() -> torch.Tensor:
    mask = np.zeros((1, 40, 40), dtype=np.float32)
    mask[0, 8:30, 10:28] = 1.0
    mask[0, 18:22, 28:34] = 1.0
    mask[0, 2:4, 2:4] = 1.0
    return torch.from_numpy(mask)


def _styled(num_raters: int, seed: int, **kwargs: object) -> dict:
    transform = RandPseudoStyled(num_raters=num_raters, **kwargs)
    transform.set_random_state(seed=seed)
    return transform({"slice_mask": _episode_mask()})


def test_rater_zero_is_original() -> None:
    for seed in range(30):
        out = _styled(4, seed)
        masks = out["slice_masks"]
        assert masks.shape == (4, 40, 40)
        assert masks.dtype == torch.float32
        assert torch.equal(masks[0], _episode_mask()[0])
        assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
        assert all(masks[r].sum() > 0 for r in range(4))


def test_same_seed_same_styles() -> None:
    first, second = _styled(5, 11), _styled(5, 11)
    assert first["styles"] == second["styles"]
    assert torch.equal(first["slice_masks"], second["slice_masks"])
    drawn = {json.dumps(_styled(5, seed)["styles"]) for seed in range(10)}
    assert len(drawn) > 1


def test_styles_json_reproduce_masks() -> None:
    out = _styled(4, 3)
    styles = json.loads(json.dumps(out["styles"]))
    assert len(styles) == 3
    rebuilt = pseudo_style_masks(_episode_mask().numpy()[0], styles)
    assert np.array_equal(rebuilt, out["slice_masks"].numpy())


def test_style_lengths_and_ranges() -> None:
    transform = RandPseudoStyled(num_raters=2, prob_single=0.6)
    transform.set_random_state(seed=0)
    lengths = []
    for _ in range(500):
        transform.randomize()
        (style,) = transform.styles
        lengths.append(len(style))
        for name, params in style:
            assert name in STYLE_OPERATIONS
            if "radius" in params:
                assert params["radius"] in (1, 2, 3)
            if name == "remove_small_components":
                assert 5 <= params["min_size"] <= 50
            if name == "blur_threshold":
                assert 0.5 <= params["sigma"] <= 2.0
            if name == "boundary_shift":
                assert 0.0 <= params["angle"] < 360.0
    assert set(lengths) == {1, 2}
    assert np.mean(np.array(lengths) == 1) == pytest.approx(0.6, abs=0.07)


def test_single_rater_returns_original() -> None:
    out = _styled(1, 0)
    assert out["slice_masks"].shape == (1, 40, 40)
    assert torch.equal(out["slice_masks"][0], _episode_mask()[0])
    assert out["styles"] == []


def test_prob_zero_keeps_original() -> None:
    out = _styled(3, 0, prob=0.0)
    assert out["styles"] == [[], []]
    for rater in range(3):
        assert torch.equal(out["slice_masks"][rater], _episode_mask()[0])


def test_invalid_settings_rejected() -> None:
    with pytest.raises(ConfigError, match="num_raters"):
        RandPseudoStyled(num_raters=0)
    with pytest.raises(ConfigError, match="operations"):
        RandPseudoStyled(num_raters=2, operations=["erode", "melt"])
    with pytest.raises(InputImageError, match=r"\[1, H, W\]"):
        RandPseudoStyled(num_raters=2)({"slice_mask": torch.zeros(40, 40)})
