"""MONAI dictionary transform that loads and checks one multi-rater case."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping

from monai.transforms import MapTransform

from japc.pipeline.datalist import MultiRaterDatalist, check_case, load_datalist

__all__ = ["LoadMultiRaterCased"]

logger = logging.getLogger(__name__)


class LoadMultiRaterCased(MapTransform):
    """Load a case's image and R rater labels and check them, as the first transform of a pipeline.

    Applied to a case dict from ``MultiRaterDatalist.cases(split)``, it returns the output of
    ``japc.pipeline.datalist.check_case``: ``image`` becomes a MetaTensor ``[1, H, W, D]`` and
    ``label`` a MetaTensor ``[R, H, W, D]`` with integer label maps in the datalist's rater order.

    Example::

        datalist = load_datalist("datalist.json")
        dataset = monai.data.Dataset(
            datalist.cases("training"), transform=Compose([LoadMultiRaterCased(datalist), ...])
        )

    Args:
        datalist: the validated datalist, or the path of its JSON file.
        affine_tolerance: maximum absolute difference in mm between the image and label affines.

    The keys are fixed to ``("image", "label")``: the image path and the rater -> label path dict.

    Raises:
        DatalistError: from ``check_case`` when a file is missing, unreadable or inconsistent.
    """

    def __init__(
        self,
        datalist: MultiRaterDatalist | str | os.PathLike,
        affine_tolerance: float = 1e-3,
    ) -> None:
        super().__init__(("image", "label"))
        if not isinstance(datalist, MultiRaterDatalist):
            datalist = load_datalist(datalist)
        self.datalist = datalist
        self.affine_tolerance = affine_tolerance

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        """Return ``check_case(data, self.datalist, self.affine_tolerance)``."""
        return check_case(dict(data), self.datalist, self.affine_tolerance)
