"""Preprocessing chains: border crop, slice resampling, training-set z-score, inversion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor

from japc.errors import ConfigError, InputImageError
from japc.pipeline.checkpoints import load_model, read_checkpoint
from japc.pipeline.config import PreprocessingConfig
from japc.pipeline.datalist import load_datalist
from japc.pipeline.inference import load_query, prepare_support, segment_query
from japc.pipeline.preprocessing import intensity_preprocessing, spatial_transforms
from japc.pipeline.training import EpisodicTrainer, train
from japc.transforms.spatial import CropBorderd
from tests.synthetic import RATERS, tiny_config


def _volume(shape: tuple[int, int, int] = (40, 36, 8), spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)) -> MetaTensor:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.rand(1, *shape), affine=affine)


def test_border_crop_and_inverse() -> None:
    crop = CropBorderd(keys="image", border=4)
    volume = _volume()
    cropped = crop({"image": volume})["image"]
    assert cropped.shape == (1, 32, 28, 8)
    assert torch.equal(cropped.as_tensor(), volume.as_tensor()[:, 4:36, 4:32])
    restored = crop.inverse({"image": cropped})["image"]
    assert restored.shape == volume.shape
    assert torch.equal(restored[:, 4:36, 4:32], cropped.as_tensor())
    assert restored[:, :4].abs().sum() == 0


def test_border_crop_too_large_is_reported() -> None:
    with pytest.raises(InputImageError, match="border of 20 pixels"):
        CropBorderd(keys="image", border=20)({"image": _volume(), "case": "case07"})


def test_slice_spacing_resamples_slice_axis_only() -> None:
    config = PreprocessingConfig(spatial_size=[32, 32], slice_spacing=5.0)
    result = spatial_transforms(config, label_key=None)({"image": _volume()})["image"]
    assert result.shape[1:3] == (32, 32)
    assert result.shape[-1] == 4
    assert float(result.affine[2, 2]) == pytest.approx(5.0)


def test_spatial_chain_inverts_to_input_grid() -> None:
    config = PreprocessingConfig(spatial_size=[32, 32], border_crop=3, slice_spacing=5.0)
    chain = spatial_transforms(config, label_key=None)
    volume = _volume()
    prepared = chain({"image": volume})["image"]
    prediction = MetaTensor(torch.ones(2, *prepared.shape[1:]), meta=dict(prepared.meta), applied_operations=list(prepared.applied_operations))
    restored = chain.inverse({"image": prediction})["image"]
    assert restored.shape == (2, 40, 36, 8)
    assert torch.allclose(restored.affine, volume.affine)
    assert restored[:, :3].abs().sum() == 0  # the cropped border maps back as zero
    assert restored[:, 5:35, 5:31].min() > 0.5


def test_dataset_zscore_needs_statistics() -> None:
    config = PreprocessingConfig(dataset_zscore=True)
    with pytest.raises(ConfigError, match="training-set statistics"):
        intensity_preprocessing(config)
    config = dataclasses.replace(config, dataset_mean=2.0, dataset_std=4.0, intensity={"mode": "none"})
    image = MetaTensor(torch.tensor([[[[2.0, 6.0, 10.0]]]]))
    result = intensity_preprocessing(config)({"image": image})["image"]
    assert torch.allclose(result.as_tensor().flatten(), torch.tensor([0.0, 1.0, 2.0]))


def test_training_stores_dataset_statistics(synthetic_datalist: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_datalist, tmp_path, iterations=2)
    config.preprocessing.dataset_zscore = True
    config.preprocessing.intensity = {"mode": "none"}
    volumes = EpisodicTrainer(dataclasses.replace(config)).load_volumes()
    images = torch.cat([v["image"].flatten() for v in volumes]).double()
    assert float(images.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(images.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    state = read_checkpoint(train(config))
    stored = state["config"]["preprocessing"]
    assert stored["dataset_mean"] > 100.0  # raw synthetic intensities are around 100-220
    assert stored["dataset_std"] > 1.0


def test_inference_with_crop_and_spacing_keeps_query_grid(trained_checkpoint: Path, synthetic_datalist: Path) -> None:
    model, config, _ = load_model(trained_checkpoint)
    config.preprocessing.border_crop = 2
    config.preprocessing.slice_spacing = 4.0
    case = load_datalist(synthetic_datalist).cases("test")[0]
    support, _ = prepare_support(model, config, case["image"], [case["label"][r] for r in RATERS], label_value=1)
    image, _ = load_query(case["image"])
    probabilities = segment_query(model, config, support, image)
    assert probabilities.shape == (3, *image.shape[1:])
    assert torch.allclose(probabilities.affine, image.affine)
    assert probabilities[:, :2].abs().sum() == 0
    assert probabilities[:, :, :2].abs().sum() == 0


def test_training_cache_holds_superpixels(synthetic_datalist: Path, tmp_path: Path) -> None:
    """The second pass reads preprocessed volumes (with superpixels) from the disk cache."""
    from monai.transforms import Randomizable

    from japc.pipeline.preprocessing import cached_training_dataset, training_preprocessing

    datalist = load_datalist(synthetic_datalist)
    config = PreprocessingConfig(spatial_size=[32, 32], superpixel_min_size=20)
    chain = training_preprocessing(config, datalist)
    assert not any(isinstance(t, Randomizable) for t in chain.transforms)
    cases = datalist.cases("test")
    first = cached_training_dataset(config, datalist, cases, tmp_path / "cache")
    volumes = [first[i] for i in range(len(first))]
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == len(cases)
    stored = torch.load(cached[0], weights_only=True)
    assert "superpixels" in stored
    assert stored["superpixels"].shape[1:3] == (32, 32)
    again = cached_training_dataset(config, datalist, cases, tmp_path / "cache")
    for index, volume in enumerate(volumes):
        assert torch.equal(again[index]["superpixels"], volume["superpixels"])


def test_training_cache_stores_labels_as_uint8(synthetic_datalist: Path, tmp_path: Path) -> None:
    """Cached rater labels are uint8 and equal the float32 label maps of the evaluation chain."""
    from japc.pipeline.preprocessing import case_preprocessing, cached_training_dataset

    datalist = load_datalist(synthetic_datalist)
    config = PreprocessingConfig(spatial_size=[32, 32], superpixel_min_size=20)
    cases = datalist.cases("test")
    dataset = cached_training_dataset(config, datalist, cases, tmp_path / "cache")
    label = dataset[0]["label"]
    stored = torch.load(sorted((tmp_path / "cache").glob("*.pt"))[0], weights_only=True)
    assert stored["label"].dtype == torch.uint8
    reference = case_preprocessing(config, datalist, with_labels=True, dataset_statistics=False)(dict(cases[0]))
    assert label.dtype == torch.uint8
    assert label.shape == reference["label"].shape
    assert label.sum() > 0
    assert torch.equal(label.float(), torch.as_tensor(reference["label"]).float())
