"""Spatial transforms that MONAI lacks in the form japc needs."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.transforms import SpatialCropd

from japc.errors import InputImageError

__all__ = ["CropBorderd"]


class CropBorderd(SpatialCropd):
    """Remove ``border`` pixels from each side of both in-plane axes of ``[C, H, W, D]`` volumes.

    Invertible like MONAI's ``SpatialCropd``: the inverse pads the border back with zeros, so a
    prediction made on the cropped volume maps back to the input grid.

    Args:
        keys: keys of the volumes to crop.
        border: pixels removed from every in-plane border.
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        InputImageError: a volume is not larger than twice the border in-plane.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, border: int, allow_missing_keys: bool = False) -> None:
        self.border = int(border)
        edges = slice(self.border, -self.border if self.border else None)
        super().__init__(keys, roi_slices=[edges, edges, slice(None)], allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            height, width = data[key].shape[1:3]
            if min(height, width) <= 2 * self.border:
                raise InputImageError(
                    f"Case {data.get('case', '<unknown>')}: {key!r} is {height} x {width} in-plane, too small to crop "
                    f"a border of {self.border} pixels on each side; lower preprocessing.border_crop."
                )
        return super().__call__(data, lazy=lazy)
