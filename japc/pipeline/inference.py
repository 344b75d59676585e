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
from monai.transforms import Compose
from tqdm.auto import tqdm

from japc.errors import DatalistError, InputImageError
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.checkpoints import load_model
from japc.pipeline.config import RunConfig
from japc.pipeline.datalist import MultiRaterDatalist, check_case
from japc.pipeline.files import ensure_writable_folder, write_nifti_atomic
from japc.pipeline.preprocessing import case_preprocessing, intensity_preprocessing, spatial_transforms
from japc.pipeline.protocol import assign_chunks
from japc.pipeline.support import SupportSet, encode_slices, encode_support

__all__ = [
    "check_support_files",
    "prepare_support",
    "load_query",
    "segment_query",
    "run_inference",
    "find_query_files",
    "check_query_files",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png")


def _check_input(role: str, image: Path, masks: list[Path], raters: list[str], label_value: int) -> dict:
    """Load and check an inference input with :func:`check_case`; ``role`` is ``support`` or ``query``.

    Raises:
        InputImageError: the message of :func:`check_case`'s error, naming the role, file and value.
    """
    datalist = MultiRaterDatalist(
        path=image.parent / role,
        name=role,
        modality="",
        classes={"foreground": label_value},
        raters=raters,
        splits={},
        origin="Inference input",
    )
    case = {"case": role, "subject": role, "image": str(image), "label": dict(zip(raters, map(str, masks)))}
    try:
        return check_case(case, datalist, allow_any_labels=True)
    except DatalistError as error:
        raise InputImageError(str(error)) from error


def _normalised_volume(config: RunConfig, volume: MetaTensor, spatial: Compose | None = None) -> MetaTensor:
    """Resize and normalise a loaded image ``[1, H, W, D]`` for the network; ``[1, h, w, D]`` float32.

    Raises:
        InputImageError: see :func:`_check_normalised`.
    """
    spatial = spatial_transforms(config.preprocessing, label_key=None) if spatial is None else spatial
    resized = spatial({"image": volume})["image"]
    if resized.untyped_storage().data_ptr() == volume.untyped_storage().data_ptr():
        # The spatial steps changed nothing and returned a view of the input, and the intensity
        # steps work in place, so copy first to leave the caller's volume unchanged.
        resized = resized.clone()
    prepared = intensity_preprocessing(config.preprocessing)({"image": resized})["image"]
    _check_normalised(prepared, volume)
    return prepared


def _check_normalised(prepared: torch.Tensor, volume: torch.Tensor) -> None:
    """Raise InputImageError when normalisation turned the finite ``volume`` into NaN or infinite values.

    This happens for finite intensities close to the float32 limit (about 3.4e38).
    """
    if bool(torch.isfinite(prepared).all()):
        return
    source = volume.meta.get("filename_or_obj", "<image>") if isinstance(volume, MetaTensor) else "<image>"
    raise InputImageError(
        f"Intensity normalisation of {source} gave NaN or infinite values (largest absolute intensity "
        f"{float(volume.abs().max()):.3g}). Rescale the image to a smaller intensity range, for example "
        "by dividing it by 1e6."
    )


def check_support_files(
    image: str | Path, masks: list[str | Path], raters: list[str] | None = None, label_value: int | None = None
) -> None:
    """Load and check the support image and its rater masks without a model.

    The checks are those of :func:`prepare_support` before encoding, so that a pipeline can
    reject a bad support before it loads weights or reads any query.

    Raises:
        InputImageError: as :func:`prepare_support`, except that a mask whose class vanishes
            only when it is resized to the network size passes here.
    """
    image, mask_paths = Path(image), [Path(m) for m in masks]
    raters = _support_raters(raters, mask_paths)
    loaded = _check_input("support", image, mask_paths, raters, 1 if label_value is None else label_value)
    label = torch.as_tensor(loaded["label"])
    if not bool((label > 0 if label_value is None else label == label_value).any()):
        raise InputImageError(_absent_class_message(mask_paths, label_value))


def _support_raters(raters: list[str] | None, mask_paths: list[Path]) -> list[str]:
    """Return ``raters``, or ``rater-0`` ... for the masks; raise InputImageError when the counts differ."""
    raters = raters or [f"rater-{r}" for r in range(len(mask_paths))]
    if len(raters) != len(mask_paths):
        raise InputImageError(f"{len(mask_paths)} support masks were given for {len(raters)} rater ids {raters}; give one id per mask.")
    return raters


def _absent_class_message(mask_paths: list[Path], label_value: int | None) -> str:
    value = "any non-zero value" if label_value is None else f"value {label_value}"
    return (
        f"No support mask marks the class ({value}) in {[str(m) for m in mask_paths]}; "
        "check --label-value or give masks that contain the structure."
    )


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
        InputImageError: unreadable files, geometry mismatch, intensities that normalisation
            turns into NaN, or a class absent from every mask.
    """
    image, mask_paths = Path(image), [Path(m) for m in masks]
    raters = _support_raters(raters, mask_paths)
    loaded = _check_input("support", image, mask_paths, raters, 1 if label_value is None else label_value)
    data = case_preprocessing(config.preprocessing)(loaded)
    _check_normalised(torch.as_tensor(data["image"]), loaded["image"])
    label = torch.as_tensor(data["label"])
    binary = label > 0 if label_value is None else label == label_value
    support = encode_support(model, torch.as_tensor(data["image"]), binary, num_chunks, batch_size=batch_size)
    if support is None:
        raise InputImageError(_absent_class_message(mask_paths, label_value))
    empty = [raters[r] for r in range(len(raters)) if not bool(binary[r].any())]
    if empty:
        logger.warning("Support masks of rater(s) %s are empty for the class; their predictions will be empty", empty)
    return support, raters


def load_query(path: str | Path) -> tuple[MetaTensor, bool]:
    """Load a query image as ``[1, H, W, D]``; returns it and whether the file was 2D.

    Raises:
        InputImageError: the file is missing, unreadable, empty, multi-channel, or has NaN or
            infinite intensities.
    """
    loaded = _check_input("query", Path(path), [], [], 1)
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
        Memory bound. Loading the query (:func:`load_query`) and segmenting it raise the peak
        resident memory of a process that already contains the model and the encoded support by at
        most ``M = 12 H W D + 2 R H W D + 4 h w D' (R + 2) + B h w (3 E + 16 R)`` bytes. Here
        ``H, W, D`` is the query's grid, ``h, w`` is ``preprocessing.spatial_size``, ``D'`` the
        number of slices after preprocessing (``D`` unless ``slice_spacing`` resamples them),
        ``R`` the number of raters, ``B`` is ``batch_size``, and ``E`` is the encoder's largest
        activation in bytes per input pixel (output channels x 4 / stride^2 over its layers: 64
        for ``resnet18`` and 128 for ``deeplabv3_resnet101`` at output stride 8, 96 for
        ``efficientnet_lite0``). The terms are the float32 query plus two float32 copies of one
        rater's map while it is mapped back to the query grid, the float16 result, the float32
        maps at the network size (R probability maps, the resized and the normalised volume),
        and per batch a layer's input, output and one temporary plus the logits and their
        softmax. A 512 x 512 x 300 CT at 256 x 256 with R = 3, B = 16 and ``resnet18`` gives
        M = 2.1 GB. ``tests/reliability/test_memory_bound.py`` measures it on smaller volumes.
    """
    spatial = spatial_transforms(config.preprocessing, label_key=None)
    prepared = _normalised_volume(config, image, spatial)
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


def check_query_files(inputs: list[str | Path]) -> list[Path]:
    """Expand ``inputs`` with :func:`find_query_files` and load and check every query once.

    Every query is checked before the first is segmented, so an unreadable or invalid file
    stops the run before any mask is written. Each file is read twice (here and when it is
    segmented), one at a time.

    Raises:
        InputImageError: a missing, unreadable or invalid query, named with its path.
    """
    files = find_query_files(inputs)
    for path in files:
        load_query(path)
    return files


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
    query_files = check_query_files(queries)
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
