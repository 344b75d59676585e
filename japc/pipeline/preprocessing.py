"""Preprocessing chains shared by training, evaluation and inference.

Every chain starts from a checked multi-rater case (``image`` ``[1, H, W, D]`` and ``label``
``[R, H, W, D]`` MetaTensors), reorients it so that the last axis holds the axial slices,
normalises intensities and resizes every slice to the network's in-plane size. Training adds
the body mask and the superpixels; these deterministic steps come before any random transform,
so MONAI's ``PersistentDataset`` caches them on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from monai.data import PersistentDataset
from monai.transforms import Compose, EnsureTyped, MapTransform, Orientationd, Resized

from japc.pipeline.config import PreprocessingConfig
from japc.pipeline.datalist import MultiRaterDatalist
from japc.transforms.body_mask import BodyMaskd
from japc.transforms.intensity import intensity_transforms
from japc.transforms.io import LoadMultiRaterCased
from japc.transforms.superpixels import Superpixelsd

__all__ = [
    "spatial_transforms",
    "case_preprocessing",
    "training_preprocessing",
    "preprocessing_key",
    "cached_training_dataset",
]

logger = logging.getLogger(__name__)

# Bumped whenever a preprocessing step changes its output, so that stale caches are not reused.
PREPROCESSING_VERSION = 1


def spatial_transforms(config: PreprocessingConfig, image_key: str = "image", label_key: str | None = "label") -> Compose:
    """Reorient and resize slices in-plane, keeping the slice count (invertible with MONAI)."""
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["trilinear"] if label_key is None else ["trilinear", "nearest-exact"]
    height, width = config.spatial_size
    return Compose(
        [
            Orientationd(keys=keys, axcodes=config.orientation, labels=None),
            Resized(keys=keys, spatial_size=(height, width, -1), mode=modes, anti_aliasing=False),
        ]
    )


def case_preprocessing(
    config: PreprocessingConfig, datalist: MultiRaterDatalist | None = None, with_labels: bool = True
) -> Compose:
    """Build the chain for evaluation: load and check a case (if ``datalist`` is given), reorient,
    resize, and normalise intensity. Output ``image`` ``[1, h, w, D]`` float32 and ``label``
    ``[R, h, w, D]`` integer label maps at the network's in-plane size.
    """
    steps: list[Any] = []
    if datalist is not None:
        steps.append(LoadMultiRaterCased(datalist))
    steps.append(spatial_transforms(config, label_key="label" if with_labels else None))
    intensity_params = {k: v for k, v in config.intensity.items() if k != "mode"}
    steps.append(intensity_transforms(config.intensity["mode"], key="image", **intensity_params))
    steps.append(EnsureTyped(keys="image", dtype="float32"))
    return Compose(steps)


def training_preprocessing(config: PreprocessingConfig, datalist: MultiRaterDatalist) -> Compose:
    """Build the cacheable training chain: :func:`case_preprocessing`, body mask, superpixels."""
    steps: list[MapTransform | Compose] = [case_preprocessing(config, datalist, with_labels=True)]
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
    return Compose(steps)


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
    payload = json.dumps(
        {"version": PREPROCESSING_VERSION, "config": config.__dict__, "files": stats}, sort_keys=True, default=str
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
