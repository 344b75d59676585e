"""Tests of the per-slice Felzenszwalb superpixels (japc.transforms.superpixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from japc.errors import ConfigError, InputImageError
from japc.transforms.superpixels import Superpixels, Superpixelsd, superpixel_slice


def _textured_volume(depth: int = 3, size: int = 64) -> np.ndarray:
    """Blocky random texture, so that felzenszwalb returns several superpixels per slice."""
    rng = np.random.RandomState(0)
    blocks = rng.rand(1, size // 16, size // 16, depth)
    return np.kron(blocks, np.ones((1, 16, 16, 1))).astype(np.float32)


def _centre_mask(depth: int = 3, size: int = 64) -> np.ndarray:
    mask = np.zeros((1, size, size, depth), dtype=np.uint8)
    mask[0, 6 : size - 6, 6 : size - 6, :] = 1
    return mask


def test_ids_renumbered_per_slice() -> None:
    labels = Superpixels(min_size=50)(_textured_volume(), _centre_mask())
    for z in range(labels.shape[-1]):
        ids = np.unique(labels[..., z])
        assert ids[0] == 0
        assert ids.size > 2
        assert np.array_equal(ids, np.arange(ids.size))


def test_zero_outside_mask() -> None:
    mask = _centre_mask()
    labels = Superpixels(min_size=50)(_textured_volume(), mask)
    assert np.all(labels[mask == 0] == 0)
    assert np.all(labels[mask == 1] > 0)


def test_identical_output_on_two_calls() -> None:
    image = _textured_volume()
    first = Superpixels(min_size=50)(image, _centre_mask())
    second = Superpixels(min_size=50)(image.copy(), _centre_mask())
    assert np.array_equal(first, second)


def test_flat_regions_never_shared() -> None:
    image = np.zeros((1, 64, 64, 1), dtype=np.float32)
    image[0, :, :32, 0] = 0.2
    image[0, :, 32:, 0] = 0.8
    labels = Superpixels()(image)[0, :, :, 0]
    left = set(np.unique(labels[:, :29]).tolist())
    right = set(np.unique(labels[:, 35:]).tolist())
    assert left
    assert right
    assert left.isdisjoint(right)


def test_small_remnants_dropped() -> None:
    image = np.zeros((64, 64), dtype=np.float32)
    image[:, 32:] = 1.0
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, :32] = 1
    mask[10:15, 44:46] = 1
    labels = superpixel_slice(image, mask, min_pixels=16)
    assert np.all(labels[10:15, 44:46] == 0)
    assert np.array_equal(np.unique(labels), [0, 1])
    lenient = superpixel_slice(image, mask, min_pixels=5)
    assert np.array_equal(np.unique(lenient), [0, 1, 2])
    assert np.all(lenient[10:15, 44:46] == 2)


def test_constant_slice_one_superpixel() -> None:
    labels = superpixel_slice(np.full((40, 40), 7.0))
    assert np.all(labels == 1)


def test_dictionary_form_metadata() -> None:
    affine = torch.diag(torch.tensor([0.7, 0.7, 3.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.from_numpy(_textured_volume()), affine=affine)
    mask = MetaTensor(torch.from_numpy(_centre_mask()), affine=affine)
    out = Superpixelsd(min_size=50)({"image": image, "body_mask": mask})["superpixels"]
    assert isinstance(out, MetaTensor)
    assert out.dtype == torch.int32
    assert tuple(out.shape) == (1, 64, 64, 3)
    assert torch.equal(out.affine, affine)


def test_no_mask_labels_everything() -> None:
    out = Superpixelsd(mask_key=None, min_size=50)({"image": _textured_volume()})["superpixels"]
    assert np.all(out > 0)


def test_missing_mask_key() -> None:
    with pytest.raises(ConfigError, match="BodyMaskd"):
        Superpixelsd()({"image": _textured_volume(), "case": "c3"})


def test_mask_grid_mismatch_rejected() -> None:
    with pytest.raises(InputImageError, match="does not match"):
        Superpixels()(_textured_volume(), np.ones((1, 32, 32, 3), dtype=np.uint8))


def test_invalid_parameters_rejected() -> None:
    with pytest.raises(ConfigError, match="min_pixels"):
        Superpixels(min_pixels=0)
    with pytest.raises(ConfigError, match="sigma"):
        Superpixels(sigma=-1.0)
