"""Inference with one configured support set, as MONAI transforms and an inferer.

The bundle's ``inference.json`` runs MONAI's stock ``SupervisedEvaluator`` over a folder of
query images: :class:`LoadQueryd` reads each query as ``japc infer`` does,
:class:`SupportSetInferer` segments it in the style of every rater of the support set given in
the configuration, and :class:`SaveRaterMasksd` writes one mask per rater (and the mean
foreground probability) on the query's own grid with MONAI's ``SaveImage``.
The support and the queries go through :func:`japc.pipeline.inference.prepare_support` and
:func:`japc.pipeline.inference.segment_query`, so the masks equal those of ``japc infer``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, NibabelWriter, decollate_batch, list_data_collate
from monai.inferers import Inferer
from monai.transforms import MapTransform, SaveImage
from torch import nn

from japc.errors import InputImageError
from japc.pipeline.bundle_evaluation import unwrap_segmenter
from japc.pipeline.config import RunConfig
from japc.pipeline.files import atomic_path
from japc.pipeline.inference import (
    check_query_files,
    check_support_files,
    load_query,
    prepare_support,
    segment_query,
)
from japc.pipeline.support import SupportSet

__all__ = [
    "rater_ids",
    "query_datalist",
    "LoadQueryd",
    "SupportSetInferer",
    "AtomicNibabelWriter",
    "SaveRaterMasksd",
]

logger = logging.getLogger(__name__)


def rater_ids(raters: Sequence[str] | None, support_masks: Sequence[str]) -> list[str]:
    """Return ``raters``, or ``rater-0 ... rater-(R-1)`` for the R support masks when it is None or empty."""
    if raters:
        if len(raters) != len(support_masks):
            raise InputImageError(
                f"{len(support_masks)} support masks were given for {len(raters)} rater ids {list(raters)}; "
                "give one id per mask."
            )
        return list(raters)
    return [f"rater-{r}" for r in range(len(support_masks))]


def query_datalist(queries: str | Path | Sequence[str | Path]) -> list[dict[str, str]]:
    """List the query images of files and folders as MONAI data items ``{"image": path}``.

    Every query is loaded and checked here, before the evaluator starts, so that an invalid
    query stops the run before any mask is written.

    Raises:
        InputImageError: a missing, unreadable or invalid query, named with its path.
    """
    inputs = [queries] if isinstance(queries, (str, Path)) else list(queries)
    return [{"image": str(path)} for path in check_query_files(inputs)]


class LoadQueryd(MapTransform):
    """Load query images as ``japc infer`` does: ``[1, H, W, D]`` MetaTensors (2D images get D = 1).

    NaN or infinite intensities and unreadable files raise :class:`~japc.errors.InputImageError`
    naming the file. The key ``was_2d`` records whether the file had two spatial dimensions.
    """

    def __init__(self, keys: str | Sequence[str] = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            result[key], result["was_2d"] = load_query(result[key])
        return result


class SupportSetInferer(Inferer):
    """Segment query volumes in the style of every rater of one support scan.

    The support files are loaded and checked when the inferer is built, so that a bad support
    stops the run before the evaluator starts. The support is encoded with the network on the
    first call (after MONAI's ``CheckpointLoader`` has loaded the weights) and reused for every
    query.

    Args:
        config: run configuration of the checkpoint (preprocessing).
        support_image: support image file.
        support_masks: one mask file per rater.
        raters: rater ids (see :func:`rater_ids`).
        label_value: class value in the masks; None for every non-zero value.
        num_chunks: chunks of the support's class range.
        batch_size: slices per encoder batch.
    """

    def __init__(
        self,
        config: RunConfig,
        support_image: str | Path,
        support_masks: Sequence[str | Path],
        raters: Sequence[str] | None = None,
        label_value: int | None = None,
        num_chunks: int = 3,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        self.config = config
        self.support_image = support_image
        self.support_masks = list(support_masks)
        self.raters = rater_ids(raters, self.support_masks)
        self.label_value = label_value
        check_support_files(support_image, self.support_masks, self.raters, label_value)
        self.num_chunks = num_chunks
        self.batch_size = batch_size
        self.support: SupportSet | None = None

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any
    ) -> MetaTensor:
        """Return foreground probabilities ``[B, R, H, W, D]`` for query images ``[B, 1, H, W, D]``."""
        model = unwrap_segmenter(network)
        if self.support is None:
            self.support, _ = prepare_support(
                model,
                self.config,
                self.support_image,
                self.support_masks,
                self.raters,
                self.label_value,
                self.num_chunks,
                self.batch_size,
            )
        if inputs.shape[0] != 1:
            raise InputImageError(
                f"Query volumes are segmented one at a time; set the data loader's batch_size to 1, got {inputs.shape[0]}."
            )
        query = _first_item(inputs).cpu()
        probabilities = segment_query(model, self.config, self.support, query, batch_size=self.batch_size)
        # The masks are written with the affine of the query file, as japc infer writes them.
        return list_data_collate([MetaTensor(probabilities.as_tensor(), meta=dict(query.meta))])


def _first_item(batch: torch.Tensor) -> MetaTensor:
    """Return item 0 of a collated batch as a MetaTensor with that item's metadata."""
    if not isinstance(batch, MetaTensor):
        raise InputImageError("Query images must be MetaTensors with their file's metadata; load them with LoadQueryd.")
    return decollate_batch(batch, detach=False)[0]


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's ``NibabelWriter`` that writes to a temporary name in the target folder, then renames.

    A run killed while it writes leaves the previous file or the complete new one, never a
    truncated NIfTI file.
    """

    def write(self, filename: str | Path, verbose: bool = False, **obj_kwargs: Any) -> None:
        """Write the NIfTI file ``filename`` (``.nii`` or ``.nii.gz``) atomically."""
        with atomic_path(filename) as temporary:
            super().write(temporary, verbose=verbose, **obj_kwargs)


class SaveRaterMasksd(MapTransform):
    """Write one binary mask per rater, and the mean foreground probability, on the query's grid.

    The input is the probability map ``[R, H, W, D]`` of one query (a MetaTensor with the
    query's metadata). Files, written by MONAI's ``SaveImage`` with :class:`AtomicNibabelWriter`
    and no resampling (the data already lies on the query's grid):

    - ``<output_dir>/<query>/<query>_<rater>.nii.gz``: uint8 mask, probability above ``threshold``;
    - ``<output_dir>/<query>/<query>_mean_probability.nii.gz``: float32 mean over raters.

    The key's value is replaced by the masks ``[R, H, W, D]`` (uint8).

    Args:
        keys: key of the probability map.
        raters: rater ids, in channel order.
        output_dir: output folder.
        threshold: foreground probability above which a voxel is foreground.
        mean_probability: also write the mean probability map.
        output_ext: file extension, which selects the format.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        raters: Sequence[str],
        output_dir: str | Path,
        threshold: float = 0.5,
        mean_probability: bool = True,
        output_ext: str = ".nii.gz",
    ) -> None:
        super().__init__(keys)
        self.raters = list(raters)
        self.threshold = threshold
        self.mean_probability = mean_probability
        common = dict(
            output_dir=str(output_dir),
            output_ext=output_ext,
            resample=False,
            separate_folder=True,
            writer=AtomicNibabelWriter,
            print_log=False,
        )
        self._mask_writers = [SaveImage(output_postfix=rater, output_dtype=np.uint8, **common) for rater in self.raters]
        self._mean_writer = SaveImage(output_postfix="mean_probability", output_dtype=np.float32, **common)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            probabilities = result[key]
            if not isinstance(probabilities, MetaTensor):
                raise InputImageError(f"SaveRaterMasksd needs a MetaTensor with the query's metadata under {key!r}.")
            if probabilities.shape[0] != len(self.raters):
                raise InputImageError(
                    f"{probabilities.shape[0]} rater maps under {key!r} but {len(self.raters)} rater ids."
                )
            masks = (probabilities > self.threshold).to(torch.uint8)
            for r, writer in enumerate(self._mask_writers):
                writer(masks[r : r + 1])
            if self.mean_probability:
                self._mean_writer(probabilities.float().mean(dim=0, keepdim=True))
            filename = probabilities.meta.get("filename_or_obj", "<query>")
            logger.info("Wrote %d rater masks for %s", len(self.raters), filename)
            result[key] = masks
        return result
