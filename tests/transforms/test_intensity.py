"""Tests of the intensity preprocessing (japc.transforms.intensity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from japc.errors import ConfigError, InputImageError
from japc.transforms.intensity import (
    INTENSITY_MODES,
    CheckFiniteIntensity,
    CheckFiniteIntensityd,
    ClipIntensityPercentile,
    ClipIntensityPercentiled,
    count_non_finite,
    intensity_transforms,
)


def _volume(values: list[float] | np.ndarray) -> torch.Tensor:
    """Put values into a [1, N, 1, 1] volume."""
    return torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(1, -1, 1, 1)


def _chain_contains(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, kind):
            return current
        current = current.__cause__
    return None


def test_ct_window_default() -> None:
    hu = _volume([-1000.0, -125.0, 75.0, 275.0, 3000.0])
    out = intensity_transforms("ct_window")({"image": hu})["image"]
    expected = np.array([0.0, 0.0, 0.5, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(out).ravel(), expected, atol=1e-6)
    assert out.dtype == torch.float32


def test_ct_window_custom_range() -> None:
    hu = _volume([-200.0, -100.0, 100.0, 300.0, 500.0])
    transform = intensity_transforms("ct_window", window=(-100, 300), output_range=(0, 255))
    out = np.asarray(transform({"image": hu})["image"]).ravel()
    np.testing.assert_allclose(out, [0.0, 0.0, 127.5, 255.0, 255.0], atol=1e-4)


def test_percentile_clip_top_half_percent() -> None:
    values = np.random.RandomState(0).permutation(2000).astype(np.float32)
    out = ClipIntensityPercentile(upper=99.5)(_volume(values))
    out_values = np.asarray(out).ravel()
    cap = np.percentile(values, 99.5)
    changed = out_values != values
    assert changed.sum() == 10
    assert np.all(values[changed] > cap)
    np.testing.assert_allclose(out_values[changed], cap, rtol=1e-6)
    assert np.array_equal(out_values[~changed], values[~changed])


def test_percentile_clip_lower_only() -> None:
    values = np.arange(1000, dtype=np.float32)
    out = np.asarray(ClipIntensityPercentile(lower=1.0, upper=None)(_volume(values))).ravel()
    floor = np.percentile(values, 1.0)
    assert np.count_nonzero(out != values) == 10
    assert out.min() == pytest.approx(floor)
    assert out.max() == 999.0


def test_percentile_clip_nonzero() -> None:
    foreground = np.arange(1, 1001, dtype=np.float32)
    values = np.concatenate([np.zeros(3000, dtype=np.float32), foreground])
    out = np.asarray(ClipIntensityPercentile(upper=99.5, nonzero=True)(_volume(values))).ravel()
    assert np.all(out[:3000] == 0)
    assert out.max() == pytest.approx(np.percentile(foreground, 99.5))
    assert np.count_nonzero(out[3000:] != foreground) == 5


def test_percentile_clip_keeps_metadata() -> None:
    image = MetaTensor(torch.arange(100.0).reshape(1, 10, 10, 1), meta={"filename_or_obj": "x.nii"})
    image.affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    out = ClipIntensityPercentiled("image")({"image": image})["image"]
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "x.nii"
    assert torch.equal(out.affine, image.affine)


def test_percentile_clip_channel_wise() -> None:
    low = np.arange(1000, dtype=np.float32)
    volume = torch.from_numpy(np.stack([low, low * 10]).reshape(2, 1000, 1, 1))
    out = np.asarray(ClipIntensityPercentile(upper=99.5, channel_wise=True)(volume))
    assert out[0].max() == pytest.approx(np.percentile(low, 99.5))
    assert out[1].max() == pytest.approx(np.percentile(low * 10, 99.5), rel=1e-6)


@pytest.mark.parametrize(
    ("lower", "upper"), [(None, None), (-1.0, 99.0), (10.0, 101.0), (60.0, 40.0)]
)
def test_percentile_clip_invalid_limits(lower: float | None, upper: float | None) -> None:
    with pytest.raises(ConfigError):
        ClipIntensityPercentile(lower=lower, upper=upper)


def test_mr_percentile_zscore() -> None:
    values = np.random.RandomState(1).gamma(2.0, 50.0, size=4000).astype(np.float32)
    out = np.asarray(intensity_transforms("mr_percentile")({"image": _volume(values)})["image"])
    assert out.mean() == pytest.approx(0.0, abs=1e-5)
    assert out.std() == pytest.approx(1.0, abs=1e-5)
    clipped = np.minimum(values, np.percentile(values, 99.5))
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(out.ravel(), expected, atol=1e-4)


def test_zscore_per_image() -> None:
    values = np.random.RandomState(2).normal(40.0, 7.0, size=3000).astype(np.float32)
    out = np.asarray(intensity_transforms("zscore")({"image": _volume(values)})["image"])
    assert out.mean() == pytest.approx(0.0, abs=1e-5)
    assert out.std() == pytest.approx(1.0, abs=1e-5)


def test_zscore_fixed_statistics() -> None:
    out = intensity_transforms("zscore", mean=2.0, std=4.0)({"image": _volume([2.0, 6.0, 10.0])})
    np.testing.assert_allclose(np.asarray(out["image"]).ravel(), [0.0, 1.0, 2.0])


def test_zscore_needs_both_statistics() -> None:
    with pytest.raises(ConfigError, match="both"):
        intensity_transforms("zscore", mean=1.0)
    with pytest.raises(ConfigError, match="positive"):
        intensity_transforms("zscore", mean=1.0, std=0.0)


def test_minmax_scales_to_unit_range() -> None:
    out = intensity_transforms("minmax")({"image": _volume([2.0, 6.0, 4.0])})["image"]
    np.testing.assert_allclose(np.asarray(out).ravel(), [0.0, 1.0, 0.5])


def test_none_leaves_values_unchanged() -> None:
    image = _volume([-3.0, 7.5, 1e6])
    out = intensity_transforms("none")({"image": image})["image"]
    assert torch.equal(out, image)


def test_unknown_mode_lists_modes() -> None:
    with pytest.raises(ConfigError) as caught:
        intensity_transforms("hist_eq")
    message = str(caught.value)
    assert "hist_eq" in message
    for mode in INTENSITY_MODES:
        assert mode in message


def test_unknown_parameter_rejected() -> None:
    with pytest.raises(ConfigError, match="upper"):
        intensity_transforms("ct_window", upper=99.0)


def test_count_non_finite() -> None:
    values = np.array([1.0, np.nan, np.inf, -np.inf, 0.0])
    assert count_non_finite(values) == 3
    assert count_non_finite(np.arange(4)) == 0


def test_nan_error_names_key_case() -> None:
    values = np.ones(10, dtype=np.float32)
    values[[2, 5]] = np.nan
    data = {"image": _volume(values), "case": "case_007"}
    with pytest.raises(InputImageError) as caught:
        CheckFiniteIntensityd("image")(data)
    message = str(caught.value)
    assert "'image'" in message
    assert "case_007" in message
    assert " 2 " in message


def test_infinity_rejected() -> None:
    with pytest.raises(InputImageError, match="1 NaN or infinite"):
        CheckFiniteIntensity()(_volume([0.0, np.inf]))


def test_nan_rejected_in_every_mode() -> None:
    image = _volume([1.0, np.nan, 3.0])
    for mode in INTENSITY_MODES:
        with pytest.raises(RuntimeError) as caught:
            intensity_transforms(mode)({"image": image, "case": "c1"})
        cause = _chain_contains(caught.value, InputImageError)
        assert cause is not None, mode
        assert "1 NaN or infinite" in str(cause)
