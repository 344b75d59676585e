"""MONAI Label app that serves japc's per-rater few-shot segmentation to 3D Slicer and OHIF.

Start it from the repository root in the label environment (see docs/monailabel.md)::

    .venv-label/bin/python -m monailabel.main start_server --app apps/monailabel --studies STUDIES \\
        --host 127.0.0.1 --port 8000 --conf checkpoint runs/lidc/checkpoints/final.pt \\
        --conf datalist data/lidc/datalist.json --conf support_case LIDC-IDRI-0081_nodule-1

The support image and its R rater masks come from the datalist case named by ``support_case``.
``POST /infer/japc?image=ID`` with the form field ``params={"rater": "rater-1", "threshold": 0.5}``
returns the label of that rater (or of ``consensus``) on the image's grid. Errors reach the client
as HTTP 400 (invalid parameter), 404 (unknown image id), 422 (unreadable image) or 503 (no usable
support set), with a JSON ``detail`` message, and the server keeps serving.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask

import japc
from japc.errors import find_japc_error
from japc.label import http_status, load_service
from lib.infers import JapcMultiRaterInfer

logger = logging.getLogger(__name__)

TASK_NAME = "japc"


class JapcLabelApp(MONAILabelApp):
    """MONAI Label app with one infer task, ``japc``, built from the server's ``--conf`` options."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self._service, self._setup_error = load_service(conf or {})
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="japc",
            description="Few-shot multi-rater segmentation: one support scan with R rater masks, one label per rater style",
            version=japc.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {TASK_NAME: JapcMultiRaterInfer(self._service, self._setup_error)}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Run the infer task and turn its errors into HTTP errors with a message for the client."""
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            if not image or not (datastore or self.datastore()).get_image_uri(image):
                logger.warning("Infer request %s rejected: image %r not found in %s", request.get("model"), image, self.studies)
                raise HTTPException(
                    status_code=404,
                    detail=f"Image {image!r} not found in the studies folder {self.studies}. "
                    "List the image ids with GET /datastore/?output=all, or upload the file.",
                )
            request = dict(request, image_id=image)
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except MONAILabelException as error:
            status = 400 if error.error == MONAILabelError.INVALID_INPUT else 500
            logger.warning("Infer request %s failed: %s", request.get("model"), error.msg)
            raise HTTPException(status_code=status, detail=error.msg) from error
        except Exception as error:
            # FastAPI would send a bare "Internal Server Error" without this message.
            japc_error = find_japc_error(error)
            if japc_error is None:
                logger.exception("Infer request %s for image %r failed", request.get("model"), image)
                raise HTTPException(status_code=500, detail=f"Inference failed: {type(error).__name__}: {error}") from error
            logger.warning("Infer request %s for image %r rejected: %s", request.get("model"), image, japc_error)
            raise HTTPException(status_code=http_status(japc_error), detail=str(japc_error)) from error
