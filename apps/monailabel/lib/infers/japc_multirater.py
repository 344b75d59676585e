"""MONAI Label infer task that returns one rater's few-shot segmentation of the request image."""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from japc.label import CONSENSUS, LABEL_VALUE, LabelServiceError, RaterSegmentationService

__all__ = ["JapcMultiRaterInfer"]

logger = logging.getLogger(__name__)


class JapcMultiRaterInfer(BasicInferTask):
    """Segment the request image in the style of one rater of the server's support set.

    Request parameters: ``rater`` (a rater id of the support set, or ``consensus``, the default)
    and ``threshold`` (foreground probability, 0 to 1 exclusive). The label (value 1 for the
    class) is written on the request image's grid, and the result JSON lists the raters, the
    chosen one and the fraction of the foreground on which the raters disagree.

    Args:
        service: the loaded model and support set, or None when they failed to load.
        setup_error: why ``service`` is None; raised for every request.
    """

    def __init__(self, service: RaterSegmentationService | None, setup_error: LabelServiceError | None = None) -> None:
        self.service = service
        self.setup_error = setup_error
        raters = service.raters if service is not None else []
        super().__init__(
            path=None,
            network=None,
            type=InferType.SEGMENTATION,
            labels={service.class_name: LABEL_VALUE} if service is not None else {},
            dimension=3,
            description=self._describe(service, setup_error),
            config={
                # A request without 'rater' gets this list, and parse_rater takes its first item.
                "rater": [CONSENSUS, *raters],
                "threshold": service.threshold if service is not None else 0.5,
                "result_extension": ".nii.gz",
                "result_dtype": "uint8",
            },
        )
        # The model stays on the device named by --conf device, so clients get no device choice.
        self._config.pop("device", None)

    @staticmethod
    def _describe(service: RaterSegmentationService | None, setup_error: LabelServiceError | None) -> str:
        if service is None:
            return f"japc few-shot multi-rater segmentation (not available: {setup_error})"
        return (
            f"japc few-shot segmentation of {service.class_name} in the style of one of the raters "
            f"{', '.join(service.raters)} of support case {service.support_case}, or their consensus"
        )

    def is_valid(self) -> bool:
        # Listed even without a support set, so clients show the model and its error message.
        return True

    def pre_transforms(self, data: dict[str, Any] | None = None) -> list:
        # The service loads the image itself, with japc's checks.
        return []

    def post_transforms(self, data: dict[str, Any] | None = None) -> list:
        return []

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        if self.service is None:
            raise self.setup_error or LabelServiceError("The japc infer task has no support set.")
        image_id = data.get("image_id") or data.get("image_path")
        segmentation = self.service.segment(
            data["image_path"], image_id=image_id, rater=data.get("rater"), threshold=data.get("threshold")
        )
        data[self.output_label_key] = segmentation.label
        data[self.output_json_key] = segmentation.result()
        return data
