"""Pseudo-styles: synthetic rater variants of one binary mask for self-supervised training.

Raters differ in a systematic, personal way (one outlines tight, one loose, one skips small
islands). During training each episode turns its superpixel mask into R variants: rater 0 keeps
the mask and every other rater gets a "style", a short list of morphological operations. A style
is written as ``[[name, {parameter: value}], ...]``, for example
``[["erode", {"radius": 2}], ["fill_holes", {}]]``, which is JSON-serialisable for logging.

All operations act on a 2D boolean mask ``[H, W]`` with rows first, and treat everything outside
the image as background.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_numpy
from scipy import ndimage
from skimage.draw import line
from skimage.morphology import disk

from japc.errors import ConfigError, InputImageError

__all__ = [
    "STYLE_OPERATIONS",
    "RandPseudoStyled",
    "apply_style",
    "blur_threshold",
    "boundary_shift",
    "closing",
    "dilate",
    "erode",
    "fill_holes",
    "opening",
    "pseudo_style_masks",
    "remove_small_components",
]

logger = logging.getLogger(__name__)

Style = list[list[Any]]
"""A rater style: a list of ``[operation name, parameter dict]`` pairs applied in order."""

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _padded_morphology(
    operation: Callable[..., np.ndarray], mask: np.ndarray, radius: int
) -> np.ndarray:
    """Apply a binary morphology operation with a disk of ``radius``, background outside the image.

    Padding by ``radius`` keeps a closing near the image edge from eroding pixels that the
    dilation pushed outside the array.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), radius, mode="constant", constant_values=False)
    result = operation(padded, structure=disk(radius).astype(bool))
    return result[radius:-radius, radius:-radius] if radius > 0 else result


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode ``mask`` ``[H, W]`` with a disk of ``radius`` pixels (a tighter outline)."""
    return _padded_morphology(ndimage.binary_erosion, mask, int(radius))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate ``mask`` ``[H, W]`` with a disk of ``radius`` pixels (a looser outline)."""
    return _padded_morphology(ndimage.binary_dilation, mask, int(radius))


def opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """Open ``mask`` ``[H, W]`` with a disk of ``radius`` pixels, removing thin protrusions."""
    return _padded_morphology(ndimage.binary_opening, mask, int(radius))


def closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Close ``mask`` ``[H, W]`` with a disk of ``radius`` pixels, bridging narrow gaps."""
    return _padded_morphology(ndimage.binary_closing, mask, int(radius))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of ``mask`` ``[H, W]``, the background regions not touching the image edge."""
    return ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Remove the 8-connected components of ``mask`` ``[H, W]`` smaller than ``min_size`` pixels."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)
    if count == 0:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    keep = sizes >= int(min_size)
    keep[0] = False
    return keep[labels]


def _translate(mask: np.ndarray, row_offset: int, col_offset: int) -> np.ndarray:
    """Return ``mask`` moved by whole pixels, filling uncovered pixels with False."""
    height, width = mask.shape
    moved = np.zeros_like(mask)
    if abs(row_offset) >= height or abs(col_offset) >= width:
        return moved
    source_rows = slice(max(0, -row_offset), height - max(0, row_offset))
    source_cols = slice(max(0, -col_offset), width - max(0, col_offset))
    target_rows = slice(max(0, row_offset), height - max(0, -row_offset))
    target_cols = slice(max(0, col_offset), width - max(0, -col_offset))
    moved[target_rows, target_cols] = mask[source_rows, source_cols]
    return moved


def boundary_shift(mask: np.ndarray, radius: int, angle: float) -> np.ndarray:
    """Shift the boundary of ``mask`` ``[H, W]`` by ``radius`` pixels toward a direction.

    The direction is ``(sin(angle), cos(angle))`` in (row, column) index order, with ``angle`` in
    degrees: 0 points toward increasing column index (right on screen), 90 toward increasing row
    index (down on screen). Boundary parts that face the direction grow by ``radius`` pixels (a
    dilation along the direction), and parts that face away shrink by ``radius`` pixels (an
    erosion along it). A convex mask moves by ``radius`` pixels without changing its area.
    Offsets follow a rasterised line, so diagonal shifts are rounded to whole pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    theta = math.radians(float(angle))
    end_row = int(round(int(radius) * math.sin(theta)))
    end_col = int(round(int(radius) * math.cos(theta)))
    rows, cols = line(0, 0, end_row, end_col)

    dilated = np.zeros_like(mask)
    eroded = np.ones_like(mask)
    for row_offset, col_offset in zip(rows, cols):
        moved = _translate(mask, int(row_offset), int(col_offset))
        dilated |= moved
        eroded &= moved
    return (dilated & ~mask) | eroded


def blur_threshold(mask: np.ndarray, sigma: float, threshold: float = 0.5) -> np.ndarray:
    """Blur ``mask`` ``[H, W]`` with a Gaussian of ``sigma`` pixels, keep pixels >= ``threshold``.

    This rounds corners and removes details smaller than about ``sigma``, like a smooth outline.
    """
    values = np.asarray(mask, dtype=np.float32)
    blurred = ndimage.gaussian_filter(values, float(sigma), mode="constant")
    return blurred >= threshold


STYLE_OPERATIONS: dict[str, Callable[..., np.ndarray]] = {
    "erode": erode,
    "dilate": dilate,
    "opening": opening,
    "closing": closing,
    "fill_holes": fill_holes,
    "remove_small_components": remove_small_components,
    "boundary_shift": boundary_shift,
    "blur_threshold": blur_threshold,
}
"""Operation names usable in a style, mapped to their functions."""


def apply_style(mask: np.ndarray, style: Sequence[Sequence[Any]]) -> np.ndarray:
    """Apply a style's operations in order to a 2D mask.

    Args:
        mask: binary mask ``[H, W]`` (non-zero is foreground).
        style: ``[[name, {parameter: value}], ...]`` with names from :data:`STYLE_OPERATIONS`.
            An empty style returns the mask unchanged.

    Returns:
        Boolean mask ``[H, W]``. When the result is empty, the original mask is returned instead,
        so that a rater never gets an empty target for a non-empty superpixel.

    Raises:
        ConfigError: for an unknown operation name or parameters the operation does not accept.
    """
    original = np.asarray(mask) != 0
    result = original
    for entry in style:
        if len(entry) != 2:
            raise ConfigError(
                f"Style entry {entry!r} is invalid. Write it as [name, {{parameters}}]."
            )
        name, params = entry
        if name not in STYLE_OPERATIONS:
            raise ConfigError(
                f"Unknown style operation {name!r}. Valid operations are "
                f"{', '.join(STYLE_OPERATIONS)}."
            )
        try:
            result = STYLE_OPERATIONS[name](result, **dict(params))
        except TypeError as error:
            raise ConfigError(
                f"Style operation {name!r} rejected parameters {params!r}: {error}"
            ) from error

    if not result.any():
        logger.debug("Style %s emptied the mask, so the original mask is kept", style)
        return original.copy()
    return result


def pseudo_style_masks(mask: np.ndarray, styles: Sequence[Sequence[Sequence[Any]]]) -> np.ndarray:
    """Build the rater masks of one episode: the original, then one mask per style.

    Args:
        mask: binary mask ``[H, W]``.
        styles: R - 1 styles, one per rater after rater 0.

    Returns:
        float32 masks ``[R, H, W]`` with values 0 and 1. Index 0 is ``mask`` itself.
    """
    original = np.asarray(mask) != 0
    raters = [original] + [apply_style(original, style) for style in styles]
    return np.stack(raters).astype(np.float32)


def _int_range(name: str, value: Sequence[int], minimum: int) -> tuple[int, int]:
    """Return ``value`` as an inclusive integer range, or raise :class:`ConfigError`."""
    low, high = (int(v) for v in value)
    if not minimum <= low <= high:
        raise ConfigError(
            f"`{name}`={tuple(value)} is invalid. Give [low, high] with {minimum} <= low <= high."
        )
    return low, high


class RandPseudoStyled(MapTransform, RandomizableTransform):
    """Draw R - 1 random styles per episode and build the R rater masks.

    Rater 0 keeps the mask. Each other rater gets one operation with probability
    ``prob_single``, otherwise two different operations in sequence. Operations are drawn
    uniformly from ``operations``, with parameters drawn uniformly from:

    - ``erode``, ``dilate``, ``opening``, ``closing``: integer ``radius`` in ``radius_range``.
    - ``fill_holes``: no parameter.
    - ``remove_small_components``: integer ``min_size`` in ``min_size_range`` (pixels).
    - ``boundary_shift``: integer ``radius`` in ``radius_range``, ``angle`` in [0, 360) degrees.
    - ``blur_threshold``: ``sigma`` in ``sigma_range`` (pixels), threshold 0.5.

    The transform only draws the styles, and :func:`pseudo_style_masks` applies them.

    Args:
        keys: key of the episode mask ``[1, H, W]`` (0/1), as written by ``RandSuperpixelLabeld``.
        num_raters: number of raters R (>= 1). With R = 1 the output is the mask alone.
        prob_single: probability that a rater's style is one operation rather than two.
        output_key: key for the rater masks, float32 ``[R, H, W]``. The drawn styles go to
            ``"styles"``: a list of R - 1 styles, JSON-serialisable.
        prob: probability of drawing styles at all. Otherwise every rater keeps the mask and each
            style is ``[]`` (``prob=0`` gives R identical raters, as in stage-1 training).
        operations: names from :data:`STYLE_OPERATIONS` to draw from.
        radius_range: inclusive range of structuring-element radii, in pixels.
        min_size_range: inclusive range of component sizes to remove, in pixels.
        sigma_range: range of Gaussian blur widths, in pixels.
        allow_missing_keys: do not raise when the key is absent.

    Raises:
        ConfigError: for an invalid number of raters, probability, operation name or range.
    """

    def __init__(
        self,
        keys: KeysCollection = "slice_mask",
        *,
        num_raters: int,
        prob_single: float = 0.6,
        output_key: Hashable = "slice_masks",
        prob: float = 1.0,
        operations: Sequence[str] = tuple(STYLE_OPERATIONS),
        radius_range: Sequence[int] = (1, 3),
        min_size_range: Sequence[int] = (5, 50),
        sigma_range: Sequence[float] = (0.5, 2.0),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(self.keys) != 1:
            raise ConfigError(f"RandPseudoStyled takes one mask key. Got {list(self.keys)}.")
        if not int(num_raters) >= 1:
            raise ConfigError(f"`num_raters`={num_raters} is invalid. Give at least 1 rater.")
        if not 0.0 <= float(prob_single) <= 1.0:
            raise ConfigError(
                f"`prob_single`={prob_single} is invalid. Give a probability in [0, 1]."
            )
        unknown = [name for name in operations if name not in STYLE_OPERATIONS]
        if unknown or len(operations) < 2:
            raise ConfigError(
                f"`operations`={list(operations)} is invalid. Give at least two of "
                f"{', '.join(STYLE_OPERATIONS)}."
            )
        self.num_raters = int(num_raters)
        self.prob_single = float(prob_single)
        self.output_key = output_key
        self.operations = tuple(operations)
        self.radius_range = _int_range("radius_range", radius_range, 1)
        self.min_size_range = _int_range("min_size_range", min_size_range, 1)
        sigma_low, sigma_high = (float(v) for v in sigma_range)
        if not 0.0 < sigma_low <= sigma_high:
            raise ConfigError(
                f"`sigma_range`={tuple(sigma_range)} is invalid. Give 0 < low <= high."
            )
        self.sigma_range = (sigma_low, sigma_high)
        self.styles: list[Style] = []

    def _draw_int(self, inclusive_range: tuple[int, int]) -> int:
        return int(self.R.randint(inclusive_range[0], inclusive_range[1] + 1))

    def _draw_parameters(self, name: str) -> dict[str, Any]:
        if name in ("erode", "dilate", "opening", "closing"):
            return {"radius": self._draw_int(self.radius_range)}
        if name == "remove_small_components":
            return {"min_size": self._draw_int(self.min_size_range)}
        if name == "boundary_shift":
            radius = self._draw_int(self.radius_range)
            return {"radius": radius, "angle": float(self.R.uniform(0.0, 360.0))}
        if name == "blur_threshold":
            return {"sigma": float(self.R.uniform(*self.sigma_range)), "threshold": 0.5}
        return {}

    def _draw_style(self) -> Style:
        count = 1 if self.R.rand() < self.prob_single else 2
        chosen = self.R.choice(len(self.operations), size=count, replace=False)
        names = [self.operations[int(i)] for i in chosen]
        return [[name, self._draw_parameters(name)] for name in names]

    def randomize(self, data: Any = None) -> None:
        """Draw the R - 1 styles of one episode into ``self.styles``."""
        RandomizableTransform.randomize(self, None)
        if not self._do_transform:
            self.styles = [[] for _ in range(self.num_raters - 1)]
            return
        self.styles = [self._draw_style() for _ in range(self.num_raters - 1)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the rater masks and the styles added.

        Raises:
            InputImageError: when the mask is not ``[1, H, W]``.
        """
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            mask = convert_to_numpy(d[key])
            if mask.ndim != 3 or mask.shape[0] != 1:
                raise InputImageError(
                    f"RandPseudoStyled needs the episode mask {key!r} as [1, H, W]. Got shape "
                    f"{mask.shape} for case {d.get('case', 'unknown case')!r}. Run "
                    "RandSuperpixelLabeld first."
                )
            d[self.output_key] = torch.from_numpy(pseudo_style_masks(mask[0], self.styles))
            d["styles"] = [
                [[name, dict(params)] for name, params in style] for style in self.styles
            ]
        return d
