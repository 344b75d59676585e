"""Per-rater segmentation of one request image from a server-side support set, for MONAI Label.

The service loads a japc checkpoint and encodes the support set once, when the server starts.
Each request then loads the image with japc's checks, segments it for all R raters with
:func:`japc.pipeline.inference.segment_query`, and returns the mask of the chosen rater (or of
the consensus) on the image's own grid, with the same shape and affine. Nothing here imports
monailabel, so japc's main environment tests this logic without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor

from japc.errors import CheckpointError, ConfigError, DatalistError, InputImageError, JapcError, find_japc_error
from japc.label.settings import CONSENSUS, LabelSettings, parse_rater, parse_threshold
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.checkpoints import load_model
from japc.pipeline.config import RunConfig
from japc.pipeline.datalist import MultiRaterDatalist, load_datalist
from japc.pipeline.inference import load_query, prepare_support, segment_query
from japc.pipeline.support import SupportSet

__all__ = [
    "LABEL_VALUE",
    "LabelServiceError",
    "RaterSegmentation",
    "RaterSegmentationService",
    "load_service",
    "rater_probability",
    "disagreement_fraction",
    "http_status",
]

logger = logging.getLogger(__name__)

LABEL_VALUE = 1
"""Value of the foreground voxels in the returned label."""


class LabelServiceError(JapcError, RuntimeError):
    """The server's support set or checkpoint is missing or failed to load, so no request can be served."""


@dataclass
class RaterSegmentation:
    """The label returned for one request and the facts reported with it.

    Attributes:
        label: uint8 MetaTensor ``[H, W, D]`` (``[H, W]`` for a 2D image) on the request image's
            grid, :data:`LABEL_VALUE` where the chosen rater's probability exceeds ``threshold``.
        raters: rater ids of the support set, in datalist order.
        rater: the chosen rater id, or ``consensus``.
        class_name: name of the segmented class in the datalist.
        threshold: foreground probability threshold used.
        rater_foreground_voxels: rater id -> foreground voxels of that rater's own mask.
        disagreement_fraction: voxels where some but not all raters mark foreground, divided by
            voxels where any rater marks foreground. None when no rater marks any voxel.
    """

    label: MetaTensor
    raters: list[str]
    rater: str
    class_name: str
    threshold: float
    rater_foreground_voxels: dict[str, int] = field(default_factory=dict)
    disagreement_fraction: float | None = None

    def result(self) -> dict[str, Any]:
        """Return the JSON-serialisable summary sent to the client with the label."""
        return {
            "raters": list(self.raters),
            "rater": self.rater,
            "class": self.class_name,
            "label_value": LABEL_VALUE,
            "threshold": self.threshold,
            "foreground_voxels": int((self.label > 0).sum()),
            "rater_foreground_voxels": dict(self.rater_foreground_voxels),
            "disagreement_fraction": self.disagreement_fraction,
        }


def rater_probability(probabilities: torch.Tensor, raters: Sequence[str], rater: str) -> torch.Tensor:
    """Select one rater's foreground probability, or the consensus (mean over raters).

    Args:
        probabilities: ``[R, ...]`` foreground probabilities, one map per rater.
        raters: the R rater ids, in the order of ``probabilities``.
        rater: a rater id or :data:`~japc.label.settings.CONSENSUS`.

    Returns:
        Float32 probabilities ``[...]``.
    """
    if rater == CONSENSUS:
        return probabilities.float().mean(dim=0)
    return probabilities[list(raters).index(rater)].float()


def disagreement_fraction(masks: torch.Tensor) -> float | None:
    """Fraction of the foreground on which the raters disagree.

    Args:
        masks: binary masks ``[R, ...]``, one per rater.

    Returns:
        Voxels marked by some but not all raters, divided by voxels marked by any rater; None
        when no rater marks any voxel.
    """
    masks = masks.bool()
    union = masks.any(dim=0)
    union_count = int(union.sum())
    if union_count == 0:
        return None
    disputed = union & ~masks.all(dim=0)
    return int(disputed.sum()) / union_count


def http_status(error: BaseException) -> int:
    """HTTP status code for an error raised while serving a request.

    400 for an invalid request parameter (:class:`ConfigError`), 422 for an image that japc cannot
    read or segment (:class:`InputImageError`, :class:`DatalistError`), 503 when the server's
    support set or checkpoint is unusable (:class:`LabelServiceError`, :class:`CheckpointError`)
    and 500 for anything else.
    """
    japc_error = find_japc_error(error)
    if isinstance(japc_error, (LabelServiceError, CheckpointError)):
        return 503
    if isinstance(japc_error, ConfigError):
        return 400
    if isinstance(japc_error, (InputImageError, DatalistError)):
        return 422
    return 500


class RaterSegmentationService:
    """A trained model and an encoded support set that segment request images per rater.

    Requests are served one at a time (a lock guards the model). The probabilities of the last
    image are kept, so that asking for another rater or threshold of the same unchanged file
    costs no second segmentation.

    Args:
        model: trained segmenter in evaluation mode.
        config: its run configuration.
        support: the encoded support set (:func:`japc.pipeline.inference.prepare_support`).
        raters: the support set's rater ids, in the order of its masks.
        class_name: name of the class the support masks mark.
        support_case: id of the support case, for logs.
        threshold: default foreground probability threshold.
        batch_size: slices per encoder batch.
    """

    def __init__(
        self,
        model: FewShotSegmenter,
        config: RunConfig,
        support: SupportSet,
        raters: Sequence[str],
        class_name: str,
        support_case: str = "",
        threshold: float = 0.5,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.config = config
        self.support = support
        self.raters = list(raters)
        self.class_name = class_name
        self.support_case = support_case
        self.threshold = threshold
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._last: tuple[tuple, MetaTensor, bool] | None = None

    @classmethod
    def from_settings(cls, settings: LabelSettings) -> RaterSegmentationService:
        """Load the checkpoint and encode the support case that ``settings`` names.

        Raises:
            CheckpointError: the checkpoint is missing, corrupt or not a japc checkpoint.
            DatalistError: the datalist is invalid, lacks the support case, or a file of the
                case fails japc's checks.
            ConfigError: the label value is not a class of the datalist, or the device is invalid.
            InputImageError: no support mask marks the class.
        """
        datalist = load_datalist(settings.datalist)
        class_name, label_value = _select_class(datalist, settings.label_value)
        case = datalist.case(settings.support_case)
        model, config, _ = load_model(settings.checkpoint, settings.device)
        masks = [case["label"][rater] for rater in datalist.raters]
        support, raters = prepare_support(
            model, config, case["image"], masks, list(datalist.raters), label_value, batch_size=settings.batch_size
        )
        logger.info(
            "Loaded checkpoint %s and support case %s (class %s, value %d, raters %s) from %s",
            settings.checkpoint, settings.support_case, class_name, label_value, ", ".join(raters), settings.datalist,
        )
        return cls(model, config, support, raters, class_name, settings.support_case, settings.threshold, settings.batch_size)

    def segment(
        self, image: str | Path, image_id: str | None = None, rater: object = None, threshold: object = None
    ) -> RaterSegmentation:
        """Segment one image and return the chosen rater's label on the image's grid.

        Args:
            image: image file or DICOM series folder.
            image_id: the client's name for the image (datastore id), used in messages.
            rater: a rater id of the support set or ``consensus`` (default).
            threshold: foreground probability threshold (default: the server's).

        Raises:
            ConfigError: ``rater`` or ``threshold`` is invalid.
            InputImageError: the image cannot be read, has more than one channel, or cannot be
                segmented.
        """
        chosen = parse_rater(rater, self.raters)
        cutoff = parse_threshold(threshold, self.threshold)
        name = image_id or str(image)
        start = time.perf_counter()
        with self._lock:
            probabilities, was_2d = self._probabilities(image, name)
        masks = probabilities.as_tensor() > cutoff
        foreground = rater_probability(probabilities.as_tensor(), self.raters, chosen) > cutoff
        label = foreground.to(torch.uint8) * LABEL_VALUE
        if was_2d:
            label = label[..., 0]
        segmentation = RaterSegmentation(
            label=MetaTensor(label, affine=probabilities.affine.clone()),
            raters=list(self.raters),
            rater=chosen,
            class_name=self.class_name,
            threshold=cutoff,
            rater_foreground_voxels={r: int(masks[i].sum()) for i, r in enumerate(self.raters)},
            disagreement_fraction=disagreement_fraction(masks),
        )
        logger.info(
            "Segmented %s for rater %s at threshold %.3g in %.2f s: %d foreground voxels, disagreement %s",
            name, chosen, cutoff, time.perf_counter() - start, int(foreground.sum()),
            segmentation.disagreement_fraction,
        )
        return segmentation

    def _probabilities(self, image: str | Path, name: str) -> tuple[MetaTensor, bool]:
        """Foreground probabilities ``[R, H, W, D]`` with the image's affine, reusing the last result."""
        # Checked before the conversion to Path, because Path("") is the working directory.
        if not str(image) or not Path(image).exists():
            raise InputImageError(f"Image {name!r} not found at {str(image)!r}. Check the image id or upload the file.")
        path = Path(image)
        status = path.stat()
        key = (str(path.resolve()), status.st_size, status.st_mtime_ns)
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        try:
            image, was_2d = load_query(path)
        except (DatalistError, InputImageError) as error:
            raise InputImageError(f"Image {name!r} cannot be segmented: {error}") from error
        probabilities = segment_query(self.model, self.config, self.support, image, batch_size=self.batch_size)
        probabilities.affine = image.affine.clone()
        self._last = (key, probabilities, was_2d)
        return probabilities, was_2d


def load_service(conf: Mapping[str, str]) -> tuple[RaterSegmentationService | None, LabelServiceError | None]:
    """Build the service from MONAI Label's ``--conf`` options, or return why it cannot be built.

    The server starts in either case. Without a service, every request fails with the returned
    error (HTTP 503), whose message tells the annotator what the administrator must fix.

    Returns:
        ``(service, None)`` on success, ``(None, error)`` when the options are missing or the
        checkpoint or support case fails to load.
    """
    try:
        settings = LabelSettings.from_conf(conf)
        service = RaterSegmentationService.from_settings(settings)
    except (JapcError, RuntimeError) as error:
        # MONAI's Compose re-raises a failing transform's JapcError as RuntimeError.
        cause = find_japc_error(error) or error
        failure = LabelServiceError(f"The japc infer task has no usable support set: {cause}")
        logger.error("%s", failure)
        return None, failure
    return service, None


def _select_class(datalist: MultiRaterDatalist, label_value: int | None) -> tuple[str, int]:
    """Name and value of the class to segment: ``label_value``, or the datalist's only class."""
    declared = ", ".join(f"{value} ({name})" for name, value in sorted(datalist.classes.items(), key=lambda item: item[1]))
    if label_value is None:
        if len(datalist.classes) != 1:
            raise ConfigError(
                f"Datalist {datalist.path} declares {len(datalist.classes)} classes ({declared}); "
                "choose one with --conf label_value VALUE."
            )
        (name, value), = datalist.classes.items()
        return name, value
    for name, value in datalist.classes.items():
        if value == label_value:
            return name, value
    raise ConfigError(
        f"--conf label_value {label_value} is not a class of datalist {datalist.path}, which declares {declared or 'no class'}. "
        "Choose one of these values."
    )
