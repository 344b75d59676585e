"""Preprocessing chains shared by training, evaluation and inference.

Every chain starts from a checked multi-rater case (``image`` ``[1, H, W, D]`` and ``label``
``[R, H, W, D]`` MetaTensors), reorients it so that the last axis is the axial slice axis,
optionally crops the in-plane border and resamples the slice axis, resizes every slice to the
network's in-plane size and normalises intensities. Training adds
the body mask and the superpixels; these deterministic steps come before any random transform,
so MONAI's ``PersistentDataset`` caches them on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from monai.data import PersistentDataset
from monai.transforms import Compose, EnsureTyped, MapTransform, NormalizeIntensityd, Orientationd, Resized, Spacingd

from japc.errors import ConfigError

from japc.pipeline.config import PreprocessingConfig
from japc.pipeline.datalist import MultiRaterDatalist
from japc.transforms.body_mask import BodyMaskd
from japc.transforms.intensity import intensity_transforms
from japc.transforms.io import LoadMultiRaterCased
from japc.transforms.spatial import CropBorderd
from japc.transforms.superpixels import Superpixelsd

__all__ = [
    "spatial_transforms",
    "case_preprocessing",
    "intensity_preprocessing",
    "training_preprocessing",
    "preprocessing_key",
    "cached_training_dataset",
]

logger = logging.getLogger(__name__)

# Bumped whenever a preprocessing step changes its output, so that stale caches are not reused.
PREPROCESSING_VERSION = 2


def spatial_transforms(config: PreprocessingConfig, image_key: str = "image", label_key: str | None = "label") -> Compose:
    """Reorient, crop the in-plane border, resample the slice axis and resize slices in-plane.

    Every step is invertible with MONAI, so inference maps predictions back to the input grid.
    """
    keys = [image_key] if label_key is None else [image_key, label_key]
    image_only = label_key is None
    height, width = config.spatial_size
    steps: list[Any] = [Orientationd(keys=keys, axcodes=config.orientation, labels=None)]
    if config.border_crop > 0:
        steps.append(CropBorderd(keys=keys, border=config.border_crop))
    if config.slice_spacing is not None:
        steps.append(
            Spacingd(
                keys=keys,
                pixdim=(0.0, 0.0, config.slice_spacing),
                mode=["bilinear"] if image_only else ["bilinear", "nearest"],
            )
        )
    steps.append(
        Resized(
            keys=keys,
            spatial_size=(height, width, -1),
            mode=["trilinear"] if image_only else ["trilinear", "nearest-exact"],
            anti_aliasing=False,
        )
    )
    return Compose(steps)


def case_preprocessing(
    config: PreprocessingConfig,
    datalist: MultiRaterDatalist | None = None,
    with_labels: bool = True,
    dataset_statistics: bool = True,
) -> Compose:
    """Build the chain for evaluation: load and check a case (if ``datalist`` is given), apply
    :func:`spatial_transforms`, then :func:`intensity_preprocessing`. Output ``image``
    ``[1, h, w, D]`` float32 and ``label`` ``[R, h, w, D]`` integer label maps at the
    network's in-plane size.
    """
    steps: list[Any] = []
    if datalist is not None:
        steps.append(LoadMultiRaterCased(datalist))
    steps.append(spatial_transforms(config, label_key="label" if with_labels else None))
    steps.append(intensity_preprocessing(config, dataset_statistics=dataset_statistics))
    return Compose(steps)


def intensity_preprocessing(config: PreprocessingConfig, key: str = "image", dataset_statistics: bool = True) -> Compose:
    """Normalise intensities with ``config.intensity``, then with the training-set statistics
    when ``dataset_zscore`` is set and ``dataset_statistics`` is True; output float32.
    """
    intensity_params = {k: v for k, v in config.intensity.items() if k != "mode"}
    steps: list[Any] = [intensity_transforms(config.intensity["mode"], key=key, **intensity_params)]
    if dataset_statistics and config.dataset_zscore:
        if config.dataset_mean is None or config.dataset_std is None:
            raise ConfigError(
                "preprocessing.dataset_zscore is set but the training-set statistics are missing; "
                "use a checkpoint written by japc train or set dataset_mean and dataset_std."
            )
        steps.append(NormalizeIntensityd(keys=key, subtrahend=config.dataset_mean, divisor=config.dataset_std))
    steps.append(EnsureTyped(keys=key, dtype="float32"))
    return Compose(steps)


def training_preprocessing(config: PreprocessingConfig, datalist: MultiRaterDatalist) -> Compose:
    """Build the cacheable training chain: :func:`case_preprocessing`, body mask, superpixels.

    The chain is flat: ``PersistentDataset`` caches the output of the transforms before the
    first random one, and MONAI counts a nested ``Compose`` as random, so a nested chain would
    cache nothing.
    """
    steps: list[MapTransform | Compose] = [case_preprocessing(config, datalist, with_labels=True, dataset_statistics=False)]
    # Rater label maps hold small integers, so storing them as uint8 (int32 when a declared value
    # exceeds 255) instead of float32 shrinks the cache and the training volumes in memory.
    label_dtype = torch.uint8 if max(datalist.label_values) <= 255 else torch.int32
    steps.append(EnsureTyped(keys="label", dtype=label_dtype))
    mask_key = None
    if config.body_mask_threshold is not None:
        steps.append(BodyMaskd(keys="image", threshold=config.body_mask_threshold, output_key="body_mask"))
        mask_key = "body_mask"
    steps.append(
        Superpixelsd(
            keys="image",
            mask_key=mask_key,
            min_size=config.superpixel_min_size,
            sigma=config.superpixel_sigma,
            scale=config.superpixel_scale,
            output_key="superpixels",
        )
    )
    return Compose(steps).flatten()


def preprocessing_key(config: PreprocessingConfig, case: dict[str, Any]) -> str:
    """Hash of everything a cached training volume depends on: settings, files, their sizes and times."""
    paths = [case["image"], *case["label"].values()]
    stats = []
    for path in paths:
        try:
            status = Path(path).stat()
            stats.append([str(path), status.st_size, status.st_mtime_ns])
        except OSError:
            stats.append([str(path), None, None])
    settings = {k: v for k, v in config.__dict__.items() if k not in ("dataset_mean", "dataset_std")}
    payload = json.dumps(
        {"version": PREPROCESSING_VERSION, "config": settings, "files": stats}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_training_dataset(
    config: PreprocessingConfig, datalist: MultiRaterDatalist, cases: list[dict[str, Any]], cache_dir: Path
) -> PersistentDataset:
    """Wrap ``cases`` in a ``PersistentDataset`` whose items are preprocessed training volumes.

    The cache file name hashes the case together with :func:`preprocessing_key`, so a changed
    file or setting is recomputed while an unchanged one is read back (``weights_only=True``).
    """
    items = [dict(case, preprocessing_key=preprocessing_key(config, case)) for case in cases]
    cache_dir.mkdir(parents=True, exist_ok=True)
    return PersistentDataset(
        data=items,
        transform=training_preprocessing(config, datalist),
        cache_dir=cache_dir,
        track_meta=False,
        weights_only=True,
    )
