"""Batch inference: segment query volumes in the style of every rater of one support scan.

For each query the command writes, on the query's own grid (same shape, affine and
orientation as the query file):

- ``<query>_<rater id>.nii.gz``: one binary mask per rater (uint8),
- ``<query>_mean_probability.nii.gz``: the mean over raters of the foreground probability
  (float32), a soft consensus,
- with ``overlays=True``, ``overlays/<query>_slice-<k>.png``: a few slices with each rater's
  contour drawn in its own colour.

Support slices are chosen as in evaluation (1/6, 1/2, 5/6 of the support's class range). The
query's class z-range is unknown at inference time. By default every query slice is segmented
and assigned to a chunk by its position in the whole volume, and ``query_range`` restricts
segmentation to known slices.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from japc.errors import InputImageError
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.checkpoints import load_model
from japc.pipeline.config import RunConfig
from japc.pipeline.datalist import MultiRaterDatalist, check_case
from japc.pipeline.files import ensure_writable_folder, write_nifti_atomic
from japc.pipeline.preprocessing import case_preprocessing, intensity_preprocessing, spatial_transforms
from japc.pipeline.protocol import assign_chunks
from japc.pipeline.support import SupportSet, encode_slices, encode_support

__all__ = ["prepare_support", "segment_query", "run_inference", "find_query_files"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png")


def _support_case(image: Path, masks: list[Path], raters: list[str], label_value: int) -> tuple[dict, MultiRaterDatalist]:
    datalist = MultiRaterDatalist(
        path=image.parent / "support",
        name="support",
        modality="",
        classes={"foreground": label_value},
        raters=raters,
        splits={},
    )
    case = {"case": "support", "subject": "support", "image": str(image), "label": dict(zip(raters, map(str, masks)))}
    return case, datalist


@torch.inference_mode()
def prepare_support(
    model: FewShotSegmenter,
    config: RunConfig,
    image: str | Path,
    masks: list[str | Path],
    raters: list[str] | None = None,
    label_value: int | None = None,
    num_chunks: int = 3,
    batch_size: int = 16,
) -> tuple[SupportSet, list[str]]:
    """Load, check and encode the support image and its R rater masks.

    Args:
        model: trained segmenter in evaluation mode.
        config: the run configuration stored with the model (its preprocessing is reused).
        image: support image file (or DICOM folder).
        masks: one mask or label-map file per rater, on the support image's grid.
        raters: rater ids (default ``rater-0`` ...).
        label_value: label value of the class in the masks; None treats every non-zero value
            as foreground.
        num_chunks: support slices taken from the class range.
        batch_size: slices per encoder batch.

    Returns:
        The encoded support and the rater ids.

    Raises:
        InputImageError: unreadable files, geometry mismatch, or a class absent from every mask.
    """
    image, mask_paths = Path(image), [Path(m) for m in masks]
    raters = raters or [f"rater-{r}" for r in range(len(mask_paths))]
    if len(raters) != len(mask_paths):
        raise InputImageError(f"{len(mask_paths)} support masks were given for {len(raters)} rater ids {raters}; give one id per mask.")
    case, datalist = _support_case(image, mask_paths, raters, 1 if label_value is None else label_value)
    loaded = check_case(case, datalist, allow_any_labels=True)
    data = case_preprocessing(config.preprocessing)(loaded)
    label = torch.as_tensor(data["label"])
    binary = label > 0 if label_value is None else label == label_value
    support = encode_support(model, torch.as_tensor(data["image"]), binary, num_chunks, batch_size=batch_size)
    if support is None:
        value = "any non-zero value" if label_value is None else f"value {label_value}"
        raise InputImageError(
            f"No support mask marks the class ({value}) in {[m.name for m in mask_paths]}; "
            "check --label-value or give masks that contain the structure."
        )
    empty = [raters[r] for r in range(len(raters)) if not bool(binary[r].any())]
    if empty:
        logger.warning("Support masks of rater(s) %s are empty for the class; their predictions will be empty", empty)
    return support, raters


def load_query(path: str | Path) -> tuple[MetaTensor, bool]:
    """Load a query image as ``[1, H, W, D]``; returns it and whether the file was 2D."""
    case, datalist = _support_case(Path(path), [], [], 1)
    loaded = check_case(case, datalist, allow_any_labels=True)
    image = loaded["image"]
    return image, bool(loaded.get("was_2d", False))


@torch.inference_mode()
def segment_query(
    model: FewShotSegmenter,
    config: RunConfig,
    support: SupportSet,
    image: MetaTensor,
    query_range: tuple[int, int] | None = None,
    batch_size: int = 16,
) -> MetaTensor:
    """Segment one query volume for every rater.

    Args:
        model: trained segmenter in evaluation mode.
        config: its run configuration.
        support: encoded support (:func:`prepare_support`).
        image: query ``[1, H, W, D]`` MetaTensor as loaded (original grid).
        query_range: first and last slice (after reorientation) to segment; None for all.
        batch_size: slices per encoder batch; bounds memory on large volumes.

    Returns:
        Foreground probabilities ``[R, H, W, D]`` on the query's original grid, float16 to halve
        the memory of large volumes (a precision of about 1e-3 is ample for thresholding and
        averaging), as a MetaTensor with the query's affine.

    Note:
        Memory: besides the query itself, the peak holds the preprocessed volume at the network
        size (float32), the probabilities at the network size (R float32 maps), one rater's
        probabilities on the original grid in float32 while it is mapped back, and the float16
        result (R maps on the original grid). Encoder activations scale with ``batch_size``.
    """
    spatial = spatial_transforms(config.preprocessing, label_key=None)
    prepared = intensity_preprocessing(config.preprocessing)(spatial({"image": image}))["image"]
    depth = prepared.shape[-1]
    first, last = query_range if query_range is not None else (0, depth - 1)
    if not 0 <= first <= last < depth:
        raise InputImageError(f"Query slice range {query_range} lies outside the volume's {depth} slices.")
    size = tuple(prepared.shape[1:3])
    num_raters = support.masks[0].shape[1]
    probabilities = torch.zeros((num_raters, *size, depth), dtype=torch.float32)
    chunk_of_slice = assign_chunks(first, last, support.num_chunks)
    for chunk in range(support.num_chunks):
        slices = [z for z, c in chunk_of_slice.items() if c == chunk]
        for start in range(0, len(slices), batch_size):
            batch = slices[start : start + batch_size]
            images = prepared.as_tensor()[..., batch].permute(3, 0, 1, 2).float()
            logits = support.logits(model, chunk, encode_slices(model, images, batch_size), size)
            probabilities[..., batch] = torch.softmax(logits, dim=2)[:, :, 1].permute(1, 2, 3, 0).cpu()
    restored = None
    for r in range(num_raters):
        # One rater at a time, so only one float32 map on the original grid exists at once.
        single = MetaTensor(
            probabilities[r : r + 1], meta=dict(prepared.meta), applied_operations=list(prepared.applied_operations)
        )
        inverted = spatial.inverse({"image": single})["image"]
        if restored is None:
            restored = MetaTensor(
                torch.empty((num_raters, *inverted.shape[1:]), dtype=torch.float16), meta=dict(inverted.meta)
            )
        restored[r] = inverted.as_tensor()[0].to(torch.float16)
        del inverted
    return restored


def find_query_files(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders into the list of query images (folders: image files inside, sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and not _is_dicom_folder(item):
            files = sorted(p for p in item.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            if not files:
                raise InputImageError(f"Query folder {item} contains no image file ({', '.join(IMAGE_SUFFIXES)}).")
            found.extend(files)
        elif item.exists():
            found.append(item)
        else:
            raise InputImageError(f"Query image not found: {item}. Check the path.")
    return found


def _is_dicom_folder(folder: Path) -> bool:
    return any(p.suffix.lower() == ".dcm" for p in folder.iterdir())


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _save(volume: torch.Tensor, affine: torch.Tensor, path: Path, dtype: Any, was_2d: bool) -> None:
    """Write ``[H, W, D]`` (``[H, W]`` for a 2D query) as NIfTI with the query's affine.

    The affine is the one MONAI's reader reports (RAS, also for DICOM and NRRD input), which is
    the convention of NIfTI.
    """
    data = volume[..., 0] if was_2d else volume
    write_nifti_atomic(data.cpu().numpy().astype(dtype), np.asarray(affine, dtype=np.float64), path)


def run_inference(
    checkpoint: str | Path,
    support_image: str | Path,
    support_masks: list[str | Path],
    queries: list[str | Path],
    output_dir: str | Path,
    raters: list[str] | None = None,
    label_value: int | None = None,
    overlays: bool = False,
    threshold: float = 0.5,
    batch_size: int = 16,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Segment every query with a trained checkpoint and one support scan; write the masks.

    Returns:
        One record per query: ``{"query", "masks": {rater: path}, "mean_probability": path,
        "overlays": [paths], "foreground_voxels": {rater: count}}``.
    """
    output_dir = ensure_writable_folder(output_dir)
    model, config, _ = load_model(checkpoint, device)
    support, raters = prepare_support(model, config, support_image, support_masks, raters, label_value, batch_size=batch_size)
    query_files = find_query_files(queries)
    records = []
    for query_path in tqdm(query_files, desc="inference", unit="query"):
        image, was_2d = load_query(query_path)
        probabilities = segment_query(model, config, support, image, batch_size=batch_size)
        records.append(_write_outputs(query_path, image, probabilities, raters, output_dir, threshold, overlays, was_2d))
    return records


def _write_outputs(
    query_path: Path,
    image: MetaTensor,
    probabilities: MetaTensor,
    raters: list[str],
    output_dir: Path,
    threshold: float,
    overlays: bool,
    was_2d: bool,
) -> dict[str, Any]:
    stem = _stem(query_path)
    folder = output_dir / stem
    masks = probabilities.as_tensor() > threshold
    record: dict[str, Any] = {"query": str(query_path), "masks": {}, "foreground_voxels": {}, "overlays": []}
    for r, rater in enumerate(raters):
        path = folder / f"{stem}_{rater}.nii.gz"
        _save(masks[r].to(torch.uint8), image.affine, path, np.uint8, was_2d)
        record["masks"][rater] = str(path)
        record["foreground_voxels"][rater] = int(masks[r].sum())
    mean = torch.zeros(probabilities.shape[1:], dtype=torch.float32)
    for r in range(len(raters)):
        mean += probabilities.as_tensor()[r].float()
    mean /= len(raters)
    mean_path = folder / f"{stem}_mean_probability.nii.gz"
    _save(mean, image.affine, mean_path, np.float32, was_2d)
    record["mean_probability"] = str(mean_path)
    if overlays:
        from japc.pipeline.overlays import write_overlays

        record["overlays"] = [str(p) for p in write_overlays(image, masks, raters, folder / "overlays", stem)]
    logger.info("Wrote %d rater masks for %s to %s", len(raters), query_path.name, folder)
    return record
