"""Body mask per axial slice: threshold, keep the largest connected component, fill holes.

The mask confines the self-supervised superpixels to the body, so that air around the patient
never becomes an episode's foreground.
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
from scipy import ndimage

from japc.errors import ConfigError, InputImageError

__all__ = ["BodyMask", "BodyMaskd", "body_mask_slice"]

logger = logging.getLogger(__name__)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def body_mask_slice(image_slice: np.ndarray, threshold: float) -> np.ndarray:
    """Compute the body mask of one 2D slice.

    Pixels strictly above ``threshold`` form the foreground. The largest 8-connected component is
    kept (the first in raster order on a tie) and its holes are filled.

    Args:
        image_slice: intensities ``[H, W]``, in the units of ``threshold``.
        threshold: intensity above which a pixel may belong to the body.

    Returns:
        Boolean mask ``[H, W]``, all False when no pixel exceeds the threshold.
    """
    foreground = image_slice > threshold
    labels, count = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(image_slice.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(largest)


class BodyMask(Transform):
    """Body mask of a volume, computed independently on each axial slice.

    A voxel is foreground when any channel exceeds ``threshold``. Each slice then keeps its
    largest 8-connected component with holes filled (see :func:`body_mask_slice`). A slice with
    nothing above the threshold gets an empty mask and no error.

    Args:
        threshold: intensity above which a voxel may belong to the body, in the units of the
            image at this point of the pipeline (for example 0.05 after a [0, 1] CT window).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float) -> None:
        try:
            self.threshold = float(threshold)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                f"Body-mask threshold {threshold!r} is invalid. Give a number."
            ) from error

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Compute the mask.

        Args:
            img: image ``[C, H, W, D]``, D the axial slice axis.

        Returns:
            uint8 mask ``[1, H, W, D]`` with values 0 and 1. It is a MetaTensor with the image's
            metadata when ``img`` is a MetaTensor, otherwise a tensor or array like ``img``.

        Raises:
            InputImageError: when ``img`` is not 4D.
        """
        volume = convert_to_numpy(img)
        if volume.ndim != 4:
            raise InputImageError(
                f"Body mask needs a channel-first volume [C, H, W, D]. Got shape {volume.shape}. "
                "Add a channel axis (EnsureChannelFirstd) and treat 2D images as D = 1."
            )
        brightest = volume.max(axis=0)
        mask = np.zeros((1, *brightest.shape), dtype=np.uint8)
        for z in range(brightest.shape[-1]):
            mask[0, :, :, z] = body_mask_slice(brightest[:, :, z], self.threshold)
        logger.debug("Body mask: %d of %d voxels", int(mask.sum()), mask.size)
        return _like(mask, img)


def _like(array: np.ndarray, reference: NdarrayOrTensor) -> NdarrayOrTensor:
    """Return ``array`` as the container type of ``reference``, copying MetaTensor metadata."""
    if isinstance(reference, MetaTensor):
        return MetaTensor(torch.from_numpy(array), meta=dict(reference.meta))
    if isinstance(reference, torch.Tensor):
        return torch.from_numpy(array).to(reference.device)
    return array


def _output_keys(
    keys: tuple[Hashable, ...], output_key: KeysCollection, owner: str
) -> tuple[Hashable, ...]:
    """Return one output key per input key, or raise :class:`ConfigError`."""
    output_keys = ensure_tuple(output_key)
    if len(output_keys) != len(keys):
        raise ConfigError(
            f"{owner} got {len(keys)} keys {list(keys)} but output_key={output_key!r}. "
            "Give one output key per input key."
        )
    return output_keys


class BodyMaskd(MapTransform):
    """Dictionary form of :class:`BodyMask`.

    Args:
        keys: key(s) of the images ``[C, H, W, D]``.
        threshold: intensity above which a voxel may belong to the body.
        output_key: key(s) for the masks ``[1, H, W, D]``, one per entry of ``keys``.
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ConfigError: when ``output_key`` does not give one output per key.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        *,
        threshold: float,
        output_key: KeysCollection = "body_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = _output_keys(self.keys, output_key, "BodyMaskd")
        self.masker = BodyMask(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the mask of each image stored under its output key."""
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.masker(d[key])
        return d
