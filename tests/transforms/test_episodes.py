"""Tests of superpixel sampling, episode augmentation and make_episode (transforms.episodes)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from japc.errors import ConfigError, InputImageError
from japc.transforms.episodes import (
    AugmentParams,
    RandEpisodeAugmentd,
    RandSuperpixelLabeld,
    augment_slice,
    elastic_displacement,
    episode_transform,
    make_episode,
    superpixel_episode_slice,
)

EPISODE_KEYS = ("support_image", "support_masks", "query_image", "query_masks")


def _volume() -> dict:
    """Volume [1, 32, 32, 4]: slices 0 and 2 without superpixels, 5 ids on slice 1, 3 on slice 3."""
    rng = np.random.RandomState(0)
    image = rng.rand(1, 32, 32, 4).astype(np.float32)
    labels = np.zeros((1, 32, 32, 4), dtype=np.int32)
    for index in range(5):
        labels[0, 4 + 5 * index : 8 + 5 * index, 4:28, 1] = index + 1
    labels[0, 2:10, 2:10, 3] = 1
    labels[0, 12:20, 2:10, 3] = 2
    labels[0, 22:30, 2:10, 3] = 3
    return {
        "image": torch.from_numpy(image),
        "superpixels": torch.from_numpy(labels),
        "case": "vol1",
    }


def _square_mask(size: int = 64, start: int = 22, stop: int = 42) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, start:stop, start:stop] = 1.0
    return mask


def test_sampling_draws_every_id() -> None:
    volume = _volume()
    labels = volume["superpixels"].numpy()
    transform = RandSuperpixelLabeld()
    drawn: dict[int, set[int]] = {1: set(), 3: set()}
    slice_counts: Counter[int] = Counter()
    for seed in range(300):
        transform.set_random_state(seed=seed)
        out = transform(volume)
        slice_index, superpixel_id = out["slice_index"], out["superpixel_id"]
        assert slice_index in (1, 3)
        slice_counts[slice_index] += 1
        drawn[slice_index].add(superpixel_id)
        expected_mask = labels[0, :, :, slice_index] == superpixel_id
        assert np.array_equal(out["slice_mask"][0].numpy() == 1.0, expected_mask)
        assert torch.equal(out["slice_image"][0], volume["image"][0, :, :, slice_index])
    assert drawn[1] == {1, 2, 3, 4, 5}
    assert drawn[3] == {1, 2, 3}
    assert 0.4 < slice_counts[1] / 300 < 0.6


def test_superpixel_slice_outputs() -> None:
    volume = _volume()
    image, mask = superpixel_episode_slice(volume["image"], volume["superpixels"], 3, 2)
    assert image.shape == (1, 32, 32)
    assert mask.shape == (1, 32, 32)
    assert image.dtype == torch.float32
    assert mask.dtype == torch.float32
    assert mask.sum() == 64
    assert torch.all(mask[0, 12:20, 2:10] == 1)


def test_no_superpixels_names_case() -> None:
    volume = _volume()
    volume["superpixels"] = torch.zeros_like(volume["superpixels"])
    with pytest.raises(InputImageError, match="vol1"):
        RandSuperpixelLabeld()(volume)


def test_multichannel_image_rejected() -> None:
    volume = _volume()
    volume["image"] = volume["image"].repeat(2, 1, 1, 1)
    with pytest.raises(InputImageError, match="one channel"):
        RandSuperpixelLabeld()(volume)


@pytest.mark.parametrize("shift", [(0.0, 3.0), (-2.0, 0.0), (4.0, -5.0)])
def test_shift_moves_mask_exactly(shift: tuple[float, float]) -> None:
    mask = _square_mask()
    image, masks = augment_slice(mask, mask, AugmentParams(shift=shift))
    expected = torch.roll(mask, shifts=(int(shift[0]), int(shift[1])), dims=(1, 2))
    assert torch.equal(masks, expected)
    assert torch.allclose(image, expected, atol=1e-4)


def test_scale_grows_area() -> None:
    mask = _square_mask()
    _, masks = augment_slice(mask, mask, AugmentParams(scale=1.2))
    assert float(masks.sum() / mask.sum()) == pytest.approx(1.44, abs=0.08)
    centre = torch.nonzero(masks[0]).float().mean(0)
    assert torch.allclose(centre, torch.tensor([31.5, 31.5]), atol=0.5)


def test_rotation_direction() -> None:
    mask = torch.zeros(1, 33, 33)
    mask[0, 15:18, 22:27] = 1.0
    _, masks = augment_slice(mask, mask, AugmentParams(angle=90.0))
    expected = torch.zeros(1, 33, 33)
    expected[0, 22:27, 15:18] = 1.0
    assert torch.equal(masks, expected)


def test_identity_params_change_nothing() -> None:
    rng = np.random.RandomState(1)
    image = torch.from_numpy(rng.normal(3.0, 2.0, size=(1, 48, 40)).astype(np.float32))
    masks = torch.from_numpy((rng.rand(3, 48, 40) > 0.5).astype(np.float32))
    out_image, out_masks = augment_slice(image, masks, AugmentParams())
    assert torch.allclose(out_image, image, atol=1e-4)
    assert torch.equal(out_masks, masks)


def test_gamma_on_normalised_range() -> None:
    image = torch.tensor([[[10.0, 15.0], [20.0, 12.0]]])
    out, _ = augment_slice(image, torch.zeros(1, 2, 2), AugmentParams(gamma=2.0))
    expected = torch.tensor([[[10.0, 12.5], [20.0, 10.4]]])
    assert torch.allclose(out, expected, atol=1e-4)


def test_image_and_masks_share_geometry() -> None:
    mask = _square_mask()
    mask[0, 30:34, 42:50] = 1.0
    params = AugmentParams(
        angle=4.0,
        shift=(1.5, -2.5),
        shear=-3.0,
        scale=1.1,
        displacement=elastic_displacement((64, 64), 10.0, 5.0, np.random.RandomState(2)),
    )
    image, masks = augment_slice(mask, mask.repeat(2, 1, 1), params)
    assert torch.equal(masks[0], masks[1])
    assert torch.equal((image[0] >= 0.5).float(), masks[0])


def test_elastic_displacement_magnitude() -> None:
    field = elastic_displacement((256, 256), 10.0, 5.0, np.random.RandomState(3))
    assert field.shape == (2, 256, 256)
    # Uniform noise on [-1, 1] has std 1/sqrt(3). A 2D Gaussian of width sigma scales the std
    # of white noise by 1 / (2 sqrt(pi) sigma).
    expected = 10.0 / math.sqrt(3.0) / (2.0 * math.sqrt(math.pi) * 5.0)
    assert float(field.std()) == pytest.approx(expected, rel=0.15)


def _l_shape() -> torch.Tensor:
    mask = torch.zeros(1, 64, 64)
    mask[0, 15:50, 20:30] = 1.0
    mask[0, 40:50, 20:50] = 1.0
    return mask


def _offset_from_box_centre(mask: torch.Tensor) -> torch.Tensor:
    pixels = torch.nonzero(mask).float()
    box_centre = (pixels.min(0).values + pixels.max(0).values) / 2
    return pixels.mean(0) - box_centre


def test_copies_differ_keep_handedness() -> None:
    mask = _l_shape()
    transform = RandEpisodeAugmentd()
    reference = _offset_from_box_centre(mask[0])
    assert reference[0] > 2.0
    assert reference[1] < -2.0
    for seed in range(10):
        transform.set_random_state(seed=seed)
        out = transform({"slice_image": mask.clone(), "slice_masks": mask.repeat(2, 1, 1)})
        assert not torch.equal(out["support_masks"], out["query_masks"])
        assert not torch.equal(out["support_image"], out["query_image"])
        for key in ("support_masks", "query_masks"):
            masks = out[key]
            assert masks.shape == (2, 64, 64)
            assert masks.dtype == torch.float32
            assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
            offset = _offset_from_box_centre(masks[0])
            assert offset[0] > 2.0
            assert offset[1] < -2.0


def test_invalid_augment_ranges() -> None:
    with pytest.raises(ConfigError, match="scale_range"):
        RandEpisodeAugmentd(scale_range=(1.2, 0.9))
    with pytest.raises(ConfigError, match="rotate_angle"):
        episode_transform(2, True, rotate_angle=5.0)


def test_make_episode_seeded() -> None:
    volume = _volume()
    transform = episode_transform(num_raters=3, pseudo_styles=True)
    first = make_episode(volume, transform, seed=7)
    again = make_episode(volume, transform, seed=7)
    other = make_episode(volume, episode_transform(num_raters=3, pseudo_styles=True), seed=8)
    for key in EPISODE_KEYS:
        assert torch.equal(first[key], again[key])
    assert first["styles"] == again["styles"]
    assert any(not torch.equal(first[key], other[key]) for key in EPISODE_KEYS)
    assert first["support_masks"].shape == (3, 32, 32)
    assert first["query_image"].shape == (1, 32, 32)
    assert "support_image" not in volume


def test_episode_without_styles() -> None:
    volume = _volume()
    episode = make_episode(volume, episode_transform(num_raters=3, pseudo_styles=False), seed=4)
    assert torch.equal(episode["slice_masks"][0], episode["slice_masks"][2])
    assert torch.equal(episode["support_masks"][0], episode["support_masks"][1])
    assert episode["styles"] == [[], []]


def test_make_episode_unwraps_error() -> None:
    volume = _volume()
    volume["superpixels"] = torch.zeros_like(volume["superpixels"])
    with pytest.raises(InputImageError, match="vol1"):
        make_episode(volume, episode_transform(num_raters=1, pseudo_styles=False), seed=0)


def test_make_episode_rejects_float_seed() -> None:
    with pytest.raises(ConfigError, match="seed"):
        make_episode(_volume(), episode_transform(1, False), seed=1.5)  # type: ignore[arg-type]
