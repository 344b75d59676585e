"""Felzenszwalb superpixels per axial slice, the pseudo-labels of self-supervised training.

The transform is deterministic (the same input gives the same labels), so it belongs before the
first random transform, where MONAI's ``CacheDataset`` or ``PersistentDataset`` can cache it.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy, ensure_tuple
from skimage.segmentation import felzenszwalb

from japc.errors import ConfigError, InputImageError

__all__ = ["Superpixels", "Superpixelsd", "superpixel_slice"]

logger = logging.getLogger(__name__)


def superpixel_slice(
    image_slice: np.ndarray,
    mask_slice: np.ndarray | None = None,
    min_size: int = 400,
    sigma: float = 1.0,
    scale: float = 1.0,
    min_pixels: int = 16,
) -> np.ndarray:
    """Segment one slice into superpixels inside a mask.

    The slice is min-max normalised to [0, 1] over the whole slice (a constant slice becomes all
    zeros) and segmented with ``skimage.segmentation.felzenszwalb``. Pixels outside the mask get
    label 0, a superpixel with fewer than ``min_pixels`` pixels inside the mask is set to 0, and
    the remaining superpixels are renumbered 1..n in order of their felzenszwalb label.

    Args:
        image_slice: intensities ``[H, W]``, or ``[C, H, W]`` for a multi-channel image.
        mask_slice: region ``[H, W]`` to segment (non-zero inside), or None for the whole slice.
        min_size: felzenszwalb minimum component size, in pixels.
        sigma: felzenszwalb Gaussian pre-smoothing width, in pixels.
        scale: felzenszwalb scale parameter. Higher values give larger superpixels.
        min_pixels: superpixels with fewer pixels than this inside the mask are dropped.

    Returns:
        int32 labels ``[H, W]``: 0 outside the mask, 1..n inside.
    """
    values = np.asarray(image_slice, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    normalised = (values - low) / (high - low) if high > low else np.zeros_like(values)
    channel_axis = 0 if normalised.ndim == 3 else None
    labels = felzenszwalb(
        normalised, scale=scale, sigma=sigma, min_size=min_size, channel_axis=channel_axis
    )

    labels = labels.astype(np.int64) + 1
    if mask_slice is not None:
        labels[np.asarray(mask_slice) == 0] = 0

    counts = np.bincount(labels.ravel())
    counts[0] = 0
    large_ids = np.flatnonzero(counts >= min_pixels)
    new_ids = np.zeros(counts.shape[0], dtype=np.int32)
    new_ids[large_ids] = np.arange(1, large_ids.size + 1, dtype=np.int32)
    return new_ids[labels]


class Superpixels(Transform):
    """Felzenszwalb superpixels of each axial slice of a volume (see :func:`superpixel_slice`).

    Ids are per slice: id 3 on slice 10 and id 3 on slice 11 are unrelated superpixels.

    Args:
        min_size: felzenszwalb minimum component size, in pixels.
        sigma: felzenszwalb Gaussian pre-smoothing width, in pixels.
        scale: felzenszwalb scale parameter. Higher values give larger superpixels.
        min_pixels: superpixels with fewer pixels than this inside the mask are set to 0.

    Raises:
        ConfigError: when a parameter is negative, or ``min_size`` or ``min_pixels`` is below 1.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, min_size: int = 400, sigma: float = 1.0, scale: float = 1.0, min_pixels: int = 16
    ) -> None:
        for name, value, minimum in (
            ("min_size", min_size, 1),
            ("min_pixels", min_pixels, 1),
            ("sigma", sigma, 0),
            ("scale", scale, 0),
        ):
            if not value >= minimum:
                raise ConfigError(
                    f"Superpixel parameter `{name}`={value} is invalid. Use a value >= {minimum}."
                )
        self.min_size = int(min_size)
        self.sigma = float(sigma)
        self.scale = float(scale)
        self.min_pixels = int(min_pixels)

    def __call__(
        self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None
    ) -> NdarrayOrTensor:
        """Compute the superpixels.

        Args:
            img: image ``[C, H, W, D]``, D the axial slice axis.
            mask: region ``[1, H, W, D]`` to segment (non-zero inside), or None for everything.

        Returns:
            int32 labels ``[1, H, W, D]``: 0 outside the mask, 1..n per slice inside. A MetaTensor
            with the image's metadata when ``img`` is a MetaTensor, otherwise like ``img``.

        Raises:
            InputImageError: when ``img`` is not 4D or ``mask`` does not match its grid.
        """
        volume = convert_to_numpy(img)
        if volume.ndim != 4:
            raise InputImageError(
                f"Superpixels need a channel-first volume [C, H, W, D]. Got shape {volume.shape}. "
                "Add a channel axis (EnsureChannelFirstd) and treat 2D images as D = 1."
            )
        region = None
        if mask is not None:
            region = convert_to_numpy(mask)
            if region.shape != (1, *volume.shape[1:]):
                raise InputImageError(
                    f"Superpixel mask shape {region.shape} does not match the image grid "
                    f"{volume.shape[1:]}. Compute the mask from this image (BodyMaskd) after any "
                    "resampling."
                )

        labels = np.zeros((1, *volume.shape[1:]), dtype=np.int32)
        for z in range(volume.shape[-1]):
            image_slice = volume[0, :, :, z] if volume.shape[0] == 1 else volume[:, :, :, z]
            mask_slice = None if region is None else region[0, :, :, z]
            labels[0, :, :, z] = superpixel_slice(
                image_slice, mask_slice, self.min_size, self.sigma, self.scale, self.min_pixels
            )
        logger.debug(
            "Superpixels: up to %d per slice over %d slices", int(labels.max()), labels.shape[-1]
        )

        if isinstance(img, MetaTensor):
            return MetaTensor(torch.from_numpy(labels), meta=dict(img.meta))
        if isinstance(img, torch.Tensor):
            return torch.from_numpy(labels).to(img.device)
        return labels


class Superpixelsd(MapTransform):
    """Dictionary form of :class:`Superpixels`.

    Args:
        keys: key(s) of the images ``[C, H, W, D]``.
        mask_key: key of the region ``[1, H, W, D]`` to segment (from :class:`BodyMaskd`), or
            None to segment whole slices.
        min_size: felzenszwalb minimum component size, in pixels.
        sigma: felzenszwalb Gaussian pre-smoothing width, in pixels.
        scale: felzenszwalb scale parameter.
        min_pixels: superpixels with fewer pixels than this inside the mask are set to 0.
        output_key: key(s) for the labels ``[1, H, W, D]``, one per entry of ``keys``.
        allow_missing_keys: do not raise when an image key is absent.

    Raises:
        ConfigError: when ``output_key`` does not give one output per key.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: Hashable | None = "body_mask",
        min_size: int = 400,
        sigma: float = 1.0,
        scale: float = 1.0,
        min_pixels: int = 16,
        output_key: KeysCollection = "superpixels",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = ensure_tuple(output_key)
        if len(self.output_keys) != len(self.keys):
            raise ConfigError(
                f"Superpixelsd got {len(self.keys)} keys {list(self.keys)} but "
                f"output_key={output_key!r}. Give one output key per input key."
            )
        self.mask_key = mask_key
        self.segmenter = Superpixels(min_size, sigma, scale, min_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the superpixels of each image under its output key.

        Raises:
            ConfigError: when ``mask_key`` is set but absent from ``data``.
        """
        d = dict(data)
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in d:
                raise ConfigError(
                    f"Superpixelsd needs the mask {self.mask_key!r}, which is missing for case "
                    f"{d.get('case', 'unknown case')!r}. Run BodyMaskd before Superpixelsd or set "
                    "mask_key=None."
                )
            mask = d[self.mask_key]
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.segmenter(d[key], mask)
        return d
