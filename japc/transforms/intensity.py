"""Intensity preprocessing: finite-value check, percentile clipping and the normalisation recipes.

The recipes reuse MONAI's ``ScaleIntensityRanged``, ``ScaleIntensityd`` and ``NormalizeIntensityd``.
This module adds what MONAI 1.6 lacks: a percentile clip whose percentiles can be taken over the
non-zero voxels only (``ClipIntensityPercentile``), and a check that rejects NaN and infinite
intensities before they reach any later step.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensityd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from japc.errors import ConfigError, InputImageError

__all__ = [
    "INTENSITY_MODES",
    "CheckFiniteIntensity",
    "CheckFiniteIntensityd",
    "ClipIntensityPercentile",
    "ClipIntensityPercentiled",
    "count_non_finite",
    "intensity_transforms",
]

logger = logging.getLogger(__name__)

INTENSITY_MODES: dict[str, tuple[str, ...]] = {
    "ct_window": ("window", "output_range"),
    "mr_percentile": ("lower", "upper", "nonzero"),
    "zscore": ("mean", "std", "nonzero"),
    "minmax": ("output_range",),
    "none": (),
}
"""Valid ``mode`` values of :func:`intensity_transforms` and the parameters that each accepts."""


def count_non_finite(img: NdarrayOrTensor) -> int:
    """Count the NaN and infinite values in an image.

    Args:
        img: array or tensor of any shape.

    Returns:
        Number of values that are NaN, +inf or -inf (0 for integer images).
    """
    values = convert_to_tensor(img, track_meta=False)
    if not torch.is_floating_point(values) and not torch.is_complex(values):
        return 0
    return int((~torch.isfinite(values)).sum().item())


def _source_file(img: Any) -> str:
    """Return the file an image was loaded from, or "unknown file" when its metadata lacks it."""
    if isinstance(img, MetaTensor):
        filename = img.meta.get("filename_or_obj")
        if filename:
            return str(filename)
    return "unknown file"


class CheckFiniteIntensity(Transform):
    """Raise :class:`InputImageError` when an image contains NaN or infinite intensities.

    NaN or infinite values would silently turn every later normalisation, superpixel and loss
    value into NaN, so they are rejected at the start of preprocessing. The image passes through
    unchanged.

    Args:
        name: how the image is named in the error message, e.g. the dictionary key.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, name: str = "image") -> None:
        self.name = name

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` unchanged after checking it.

        Raises:
            InputImageError: when any value is NaN or infinite.
        """
        count = count_non_finite(img)
        if count:
            raise InputImageError(
                f"Image {self.name!r} ({_source_file(img)}) contains {count} NaN or infinite "
                "values. Replace them in the file (for example with the background value) "
                "before running japc."
            )
        return img


class CheckFiniteIntensityd(MapTransform):
    """Dictionary form of :class:`CheckFiniteIntensity`, whose error names the key, case and file.

    Args:
        keys: keys of the images to check.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` after checking every image in ``keys``.

        Raises:
            InputImageError: when an image contains NaN or infinite values.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            count = count_non_finite(d[key])
            if count:
                case = d.get("case", "unknown case")
                raise InputImageError(
                    f"Image {key!r} of case {case!r} ({_source_file(d[key])}) contains {count} "
                    "NaN or infinite values. Replace them in the file (for example with the "
                    "background value) or remove the case from the datalist."
                )
        return d


def _check_percentiles(lower: float | None, upper: float | None) -> None:
    """Raise :class:`ConfigError` unless the percentiles are valid clip limits."""
    if lower is None and upper is None:
        raise ConfigError("ClipIntensityPercentile needs `lower`, `upper` or both. Got neither.")
    for name, value in (("lower", lower), ("upper", upper)):
        if value is not None and not 0.0 <= value <= 100.0:
            raise ConfigError(f"Percentile `{name}`={value} is invalid. Use a value in [0, 100].")
    if lower is not None and upper is not None and lower > upper:
        raise ConfigError(f"Percentile `lower`={lower} exceeds `upper`={upper}. Swap them.")


class ClipIntensityPercentile(Transform):
    """Clip intensities to percentiles of the image's own histogram.

    Unlike MONAI's ``ClipIntensityPercentiles``, the percentiles can be computed over the non-zero
    voxels only (``nonzero=True``), which suits skull-stripped MRI with a zero background. With
    ``nonzero=True`` only the non-zero voxels are clipped, so the background stays 0.

    Percentiles use linear interpolation between order statistics (``numpy.percentile``'s
    default). The default ``upper=99.5`` caps the top 0.5 % of the histogram, which tames the few
    very bright voxels of brain MRI before a z-score.

    Args:
        lower: lower percentile in [0, 100], or None to leave low values unclipped.
        upper: upper percentile in [0, 100], or None to leave high values unclipped.
        nonzero: compute the percentiles over, and clip, the non-zero voxels only.
        channel_wise: compute the percentiles for each channel separately.

    Raises:
        ConfigError: when both percentiles are None, one is outside [0, 100] or lower > upper.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        lower: float | None = None,
        upper: float | None = 99.5,
        nonzero: bool = False,
        channel_wise: bool = False,
    ) -> None:
        _check_percentiles(lower, upper)
        self.lower = lower
        self.upper = upper
        self.nonzero = nonzero
        self.channel_wise = channel_wise

    def _clip_in_place(self, values: torch.Tensor) -> None:
        selected = values != 0 if self.nonzero else torch.ones_like(values, dtype=torch.bool)
        chosen = values[selected]
        if chosen.numel() == 0:
            return
        chosen_np = chosen.detach().cpu().numpy()
        low = float(np.percentile(chosen_np, self.lower)) if self.lower is not None else None
        high = float(np.percentile(chosen_np, self.upper)) if self.upper is not None else None
        values[selected] = torch.clamp(chosen, min=low, max=high)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Clip a channel-first image.

        Args:
            img: image ``[C, H, W, D]`` (any channel-first shape), array or tensor.

        Returns:
            The clipped image as float32, of the input's type, with its metadata.
        """
        values = convert_to_tensor(img, track_meta=False, dtype=torch.float32).clone()
        if self.channel_wise:
            for channel in values:
                self._clip_in_place(channel)
        else:
            self._clip_in_place(values)
        clipped, *_ = convert_to_dst_type(values, img, dtype=torch.float32)
        return clipped


class ClipIntensityPercentiled(MapTransform):
    """Dictionary form of :class:`ClipIntensityPercentile`.

    Args:
        keys: keys of the images to clip.
        lower: lower percentile in [0, 100], or None to leave low values unclipped.
        upper: upper percentile in [0, 100], or None to leave high values unclipped.
        nonzero: compute the percentiles over, and clip, the non-zero voxels only.
        channel_wise: compute the percentiles for each channel separately.
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float | None = None,
        upper: float | None = 99.5,
        nonzero: bool = False,
        channel_wise: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.clipper = ClipIntensityPercentile(lower, upper, nonzero, channel_wise)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with every image in ``keys`` clipped."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.clipper(d[key])
        return d


def _two_floats(name: str, value: Sequence[float]) -> tuple[float, float]:
    """Return ``value`` as an increasing pair of floats, or raise :class:`ConfigError`."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"`{name}`={value!r} is invalid. Give two numbers [low, high]."
        ) from error
    if not low < high:
        raise ConfigError(f"`{name}`={value!r} is invalid. The first number must be the smaller.")
    return low, high


def _zscore_statistics(mean: float | None, std: float | None) -> tuple[float | None, float | None]:
    """Check the optional fixed z-score statistics and return them as floats."""
    if (mean is None) != (std is None):
        raise ConfigError(
            f"z-score needs both `mean` and `std` or neither. Got mean={mean}, std={std}."
        )
    if std is not None and not float(std) > 0.0:
        raise ConfigError(f"z-score `std`={std} is invalid. Give a positive standard deviation.")
    if mean is None:
        return None, None
    return float(mean), float(std)


def intensity_transforms(mode: str, key: str = "image", **params: Any) -> Compose:
    """Build the intensity preprocessing for one image key.

    Every mode starts with :class:`CheckFiniteIntensityd`, so a NaN or infinite voxel raises
    :class:`InputImageError` naming the key, the case and the count. Modes and their ``params``:

    - ``"ct_window"``: clip to the HU ``window`` (default ``(-125, 275)``) and scale it linearly
      to ``output_range`` (default ``(0, 1)``). Output values lie in ``output_range``: -125 HU
      maps to 0 and 275 HU to 1. For the CURVAS recipe (window to [0, 255], then z-score with
      training statistics) chain this with ``intensity_transforms("zscore", mean=..., std=...)``.
    - ``"mr_percentile"``: :class:`ClipIntensityPercentiled` (``lower`` default None, ``upper``
      default 99.5, ``nonzero`` default False), then a per-image z-score (mean 0, population
      std 1, over the non-zero voxels when ``nonzero``). Output is unbounded.
    - ``"zscore"``: per-image z-score, or ``(x - mean) / std`` with fixed ``mean`` and ``std``
      (for example training-set statistics). ``nonzero`` restricts it to non-zero voxels.
      Output is unbounded. A constant image gives all zeros.
    - ``"minmax"``: scale the image's min and max to ``output_range`` (default ``(0, 1)``).
      A constant image gives all ``output_range[0]``.
    - ``"none"``: the finite check only, so intensities and dtype are unchanged.

    Args:
        mode: one of :data:`INTENSITY_MODES`.
        key: dictionary key of the image ``[C, H, W, D]``.
        params: mode parameters listed above.

    Returns:
        A MONAI ``Compose`` of dictionary transforms. Outputs are float32 except for ``"none"``.
        Inside a ``Compose``, MONAI re-raises a transform's error as ``RuntimeError`` with the
        original (for example :class:`InputImageError`) as its ``__cause__``.

    Raises:
        ConfigError: for an unknown mode, a parameter the mode does not accept, or an invalid
            parameter value.
    """
    if mode not in INTENSITY_MODES:
        raise ConfigError(
            f"Unknown intensity mode {mode!r}. Valid modes are {', '.join(INTENSITY_MODES)}."
        )
    unknown = sorted(set(params) - set(INTENSITY_MODES[mode]))
    if unknown:
        accepted = ", ".join(INTENSITY_MODES[mode]) or "none"
        raise ConfigError(
            f"Intensity mode {mode!r} does not accept {', '.join(unknown)}. "
            f"Accepted parameters: {accepted}."
        )

    steps: list[Transform] = [CheckFiniteIntensityd(key)]
    if mode == "ct_window":
        low, high = _two_floats("window", params.get("window", (-125.0, 275.0)))
        out_low, out_high = _two_floats("output_range", params.get("output_range", (0.0, 1.0)))
        steps.append(
            ScaleIntensityRanged(
                key, a_min=low, a_max=high, b_min=out_low, b_max=out_high, clip=True
            )
        )
    elif mode == "mr_percentile":
        nonzero = bool(params.get("nonzero", False))
        steps.append(
            ClipIntensityPercentiled(
                key, lower=params.get("lower"), upper=params.get("upper", 99.5), nonzero=nonzero
            )
        )
        steps.append(NormalizeIntensityd(key, nonzero=nonzero, channel_wise=True))
    elif mode == "zscore":
        mean, std = _zscore_statistics(params.get("mean"), params.get("std"))
        nonzero = bool(params.get("nonzero", False))
        channel_wise = mean is None
        steps.append(
            NormalizeIntensityd(
                key, subtrahend=mean, divisor=std, nonzero=nonzero, channel_wise=channel_wise
            )
        )
    elif mode == "minmax":
        out_low, out_high = _two_floats("output_range", params.get("output_range", (0.0, 1.0)))
        steps.append(ScaleIntensityd(key, minv=out_low, maxv=out_high))

    logger.debug("Intensity preprocessing for %r: mode %s, parameters %s", key, mode, params)
    return Compose(steps)
