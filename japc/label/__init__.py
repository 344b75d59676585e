"""japc served to annotation clients (3D Slicer, OHIF) through a MONAI Label app.

The app itself lives in ``apps/monailabel`` and needs the ``label`` environment (see
``docs/monailabel.md``). This package contains its logic and imports no monailabel module.
"""

from __future__ import annotations

from japc.label.service import (
    LABEL_VALUE,
    LabelServiceError,
    RaterSegmentation,
    RaterSegmentationService,
    disagreement_fraction,
    http_status,
    load_service,
    rater_probability,
)
from japc.label.settings import CONF_KEYS, CONSENSUS, LabelSettings, parse_rater, parse_threshold

__all__ = [
    "CONF_KEYS",
    "CONSENSUS",
    "LABEL_VALUE",
    "LabelServiceError",
    "LabelSettings",
    "RaterSegmentation",
    "RaterSegmentationService",
    "disagreement_fraction",
    "http_status",
    "load_service",
    "parse_rater",
    "parse_threshold",
    "rater_probability",
]
