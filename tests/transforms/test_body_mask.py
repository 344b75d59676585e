"""Tests of the per-slice body mask (japc.transforms.body_mask)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from japc.errors import ConfigError, InputImageError
from japc.transforms.body_mask import BodyMask, BodyMaskd, body_mask_slice


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def test_hole_filled_and_blob_removed() -> None:
    body = _disk((48, 48), (20, 20), 14)
    hole = _disk((48, 48), (20, 20), 4)
    image_slice = np.where(body & ~hole, 100.0, 0.0)
    image_slice[42:45, 42:45] = 100.0
    mask = body_mask_slice(image_slice, threshold=50.0)
    assert np.array_equal(mask, body)
    assert not mask[43, 43]
    assert mask[20, 20]


def test_threshold_is_strict() -> None:
    image_slice = np.zeros((8, 8))
    image_slice[2:6, 2:6] = 1.0
    assert body_mask_slice(image_slice, threshold=1.0).sum() == 0
    assert body_mask_slice(image_slice, threshold=0.99).sum() == 16


def test_output_type_and_empty_slice() -> None:
    volume = np.zeros((1, 32, 32, 3), dtype=np.float32)
    volume[0, :, :, 0] = _disk((32, 32), (16, 16), 10) * 1.0
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(volume), affine=affine)
    out = BodyMaskd(threshold=0.5)({"image": image})["body_mask"]
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (1, 32, 32, 3)
    assert torch.equal(out.affine, affine)
    assert set(np.unique(np.asarray(out)).tolist()) == {0, 1}
    assert int(out[..., 1].sum()) == 0
    assert int(out[..., 2].sum()) == 0


def test_largest_component_per_slice() -> None:
    volume = np.zeros((1, 40, 40, 2), dtype=np.float32)
    large = _disk((40, 40), (12, 12), 8)
    small = _disk((40, 40), (32, 32), 3)
    volume[0, :, :, 0] = large | small
    volume[0, :, :, 1] = small
    mask = BodyMask(threshold=0.5)(volume)
    assert np.array_equal(mask[0, :, :, 0].astype(bool), large)
    assert np.array_equal(mask[0, :, :, 1].astype(bool), small)


def test_any_channel_counts() -> None:
    volume = np.zeros((2, 20, 20, 1), dtype=np.float32)
    volume[0, 2:10, 2:10, 0] = 1.0
    volume[1, 8:16, 8:16, 0] = 1.0
    mask = BodyMask(threshold=0.5)(volume)[0, :, :, 0].astype(bool)
    expected = np.zeros((20, 20), dtype=bool)
    expected[2:10, 2:10] = True
    expected[8:16, 8:16] = True
    assert np.array_equal(mask, expected)


def test_rejects_non_volume() -> None:
    with pytest.raises(InputImageError, match="shape"):
        BodyMask(threshold=0.0)(np.zeros((1, 8, 8)))


def test_output_key_per_key() -> None:
    with pytest.raises(ConfigError, match="output key"):
        BodyMaskd(["ct", "pet"], threshold=0.0)
    transform = BodyMaskd(["ct", "pet"], threshold=0.0, output_key=["ct_body", "pet_body"])
    assert transform.output_keys == ("ct_body", "pet_body")
