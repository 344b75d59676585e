"""Importers that turn public multi-rater datasets into NIfTI files and a japc datalist.

Supported layouts:

- ``lidc``: the LIDC-IDRI nodule slices, ``LIDC-IDRI-PPPP/nodule-N/images/slice-K.png`` with
  one ``mask-R/slice-K.png`` per rater.
- ``qubiq``: the QUBIQ challenge layout, ``caseNN/image.nii.gz`` with ``taskTT_segRR.nii.gz``
  per task and rater, directly under the source folder or under ``Training`` and ``Validation``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from tqdm import tqdm

from japc.errors import ConfigError, DatalistError
from japc.pipeline.datalist import write_datalist
from japc.pipeline.files import ensure_writable_folder, write_nifti_atomic

__all__ = [
    "import_lidc",
    "import_qubiq",
    "detect_layout",
    "LIDC_LICENCE",
    "LIDC_CITATION",
]

logger = logging.getLogger(__name__)

LIDC_LICENCE = (
    "LIDC-IDRI is distributed by The Cancer Imaging Archive (TCIA) under the Creative Commons "
    "Attribution 3.0 licence (CC BY 3.0)."
)
LIDC_CITATION = (
    'Armato SG III et al., "The Lung Image Database Consortium (LIDC) and Image Database Resource '
    'Initiative (IDRI): A Completed Reference Database of Lung Nodules on CT Scans", Medical Physics '
    '38(2), 2011, 915-931; Clark K et al., "The Cancer Imaging Archive (TCIA)", Journal of Digital '
    "Imaging 26(6), 2013, 1045-1057."
)
QUBIQ_LICENCE = (
    "QUBIQ challenge data: use it under the terms you accepted when you downloaded it from the "
    "challenge organisers."
)

_SUBJECT_PATTERN = re.compile(r"^LIDC-IDRI-\d+$")
_NODULE_PATTERN = re.compile(r"^nodule-(\d+)$")
_SLICE_PATTERN = re.compile(r"^slice-(\d+)\.png$")
_MASK_PATTERN = re.compile(r"^mask-(\d+)$")
_SEGMENTATION_PATTERN = re.compile(r"^(task\d+)_seg(\d+)\.nii(\.gz)?$")
_QUBIQ_SPLIT_FOLDERS = {"Training": "training", "Validation": "test"}


def detect_layout(source: str | os.PathLike) -> str:
    """Return ``"lidc"`` or ``"qubiq"`` for the dataset folder ``source``.

    Raises:
        DatalistError: the folder does not exist or matches neither layout, or it matches both.
    """
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DatalistError(f"Dataset folder {source} not found. Check the path.")
    is_lidc = any(True for _ in source.glob("*/nodule-*/images"))
    is_qubiq = bool(_find_qubiq_cases(source))
    if is_lidc and is_qubiq:
        raise DatalistError(
            f"Dataset folder {source} contains both LIDC nodule folders and QUBIQ case folders. "
            "Import each dataset from its own folder."
        )
    if is_lidc:
        return "lidc"
    if is_qubiq:
        return "qubiq"
    raise DatalistError(
        f"Dataset folder {source} matches no known layout. Expected LIDC "
        "('LIDC-IDRI-PPPP/nodule-N/images/slice-K.png' and 'mask-R/slice-K.png') or QUBIQ "
        "('caseNN/image.nii.gz' and 'taskTT_segRR.nii.gz', optionally under 'Training' and "
        "'Validation')."
    )


def import_lidc(
    source: str | os.PathLike,
    output: str | os.PathLike,
    splits: dict[str, tuple[str, str]] | None = None,
    default_split: str = "training",
    progress: bool = True,
) -> Path:
    """Convert the LIDC-IDRI nodule slices into NIfTI volumes and a multi-rater datalist.

    Each nodule folder ``LIDC-IDRI-PPPP/nodule-N`` becomes the case ``LIDC-IDRI-PPPP_nodule-N``
    (subject ``LIDC-IDRI-PPPP``). Its slices, sorted by the integer K of ``slice-K.png``, are
    stacked into a volume ``[H, W, K]`` with ``volume[:, :, k]`` equal to the PNG array (rows,
    columns). Outputs:

    - ``output/images/<case>.nii.gz``: uint8 intensities as in the PNG files.
    - ``output/labels/<case>_rater-<R>.nii.gz``: uint8 masks, 0 or 1, from ``mask-R`` (0 or 255).
    - ``output/datalist.json``: raters ``rater-0`` ..., labels ``{"0": "background", "1": "nodule"}``,
      written after every volume.

    NOTE: the PNG export lost the pixel spacing and slice thickness, so every volume gets an
    identity affine (1 mm voxels). Distances and volumes computed on these files are in voxels.
    ``mask-R`` is not the same radiologist from one nodule to the next, because LIDC does not
    keep reader identity across nodules.

    Args:
        source: the folder that contains the ``LIDC-IDRI-PPPP`` folders.
        output: destination folder, created if needed. Existing files with the same names are
            replaced.
        splits: split name -> inclusive range ``(first, last)`` of subject ids, compared as
            strings, for example ``{"training": ("LIDC-IDRI-0001", "LIDC-IDRI-0080"),
            "test": ("LIDC-IDRI-0081", "LIDC-IDRI-0120")}``.
        default_split: split of the subjects that fall in no range (all subjects when
            ``splits`` is None).
        progress: show a progress bar over nodules.

    Returns:
        The path of ``output/datalist.json``.

    Raises:
        DatalistError: the source has no nodule folder, or a nodule has a missing slice, non
            consecutive slice numbers, a missing mask folder, an image/mask size mismatch or mask
            values other than 0 and 255. The message names the file.
        ConfigError: a split range is reversed or two ranges contain the same subject.
    """
    source = Path(source).expanduser().absolute()
    output = Path(output).expanduser().absolute()
    nodules = _find_lidc_nodules(source)
    raters = _lidc_mask_folders(nodules[0][2])
    ensure_writable_folder(output)
    logger.info("Importing %d LIDC nodules from %s into %s", len(nodules), source, output)

    # Read and check every nodule before writing the first file, so that a damaged nodule leaves
    # the output folder as it was. Each nodule is read twice, one at a time.
    for subject, nodule_number, folder in tqdm(nodules, desc="checking nodules", unit="nodule", disable=not progress):
        _read_lidc_nodule(folder, _lidc_nodule_raters(folder, raters, nodules[0][2]))

    split_cases: dict[str, list[dict]] = {name: [] for name in (splits or {})}
    identity = np.eye(4)
    for subject, nodule_number, folder in tqdm(nodules, desc="LIDC nodules", unit="nodule", disable=not progress):
        volume, masks = _read_lidc_nodule(folder, raters)
        case_id = f"{subject}_nodule-{nodule_number}"
        image_path = write_nifti_atomic(volume, identity, output / "images" / f"{case_id}.nii.gz")
        label_paths = {}
        for rater_number, mask in zip(raters, masks):
            rater = f"rater-{rater_number}"
            label_path = output / "labels" / f"{case_id}_{rater}.nii.gz"
            label_paths[rater] = str(write_nifti_atomic(mask, identity, label_path))
        split = _split_for(subject, splits, default_split)
        split_cases.setdefault(split, []).append(
            {"case": case_id, "subject": subject, "image": str(image_path), "label": label_paths}
        )

    _warn_empty_splits(split_cases, output)
    datalist = {
        "name": "LIDC-IDRI nodules",
        "description": (
            f"{len(nodules)} lung-nodule CT crops from LIDC-IDRI with {len(raters)} radiologist "
            "masks each, imported from PNG slices. Pixel spacing and slice thickness were lost in the "
            "PNG export, so the volumes use an identity affine (1 mm voxels), and intensities are "
            "8-bit windowed values, not Hounsfield units. Rater ids do not denote the same "
            "radiologist across nodules."
        ),
        "modality": "CT",
        "labels": {"0": "background", "1": "nodule"},
        "raters": [f"rater-{r}" for r in raters],
        "licence": LIDC_LICENCE,
        "citation": LIDC_CITATION,
        **split_cases,
    }
    return write_datalist(datalist, output / "datalist.json")


def import_qubiq(
    source: str | os.PathLike,
    output: str | os.PathLike,
    tasks: list[str] | None = None,
    splits: dict[str, tuple[str, str]] | None = None,
    default_split: str = "training",
    modality: str = "unknown",
    progress: bool = True,
) -> Path:
    """Convert a QUBIQ dataset into NIfTI volumes and a multi-rater datalist.

    Each case folder ``caseNN`` contains ``image.nii.gz`` and ``taskTT_segRR.nii.gz`` per task TT
    and rater RR (from 01). Each selected task becomes one class whose value is its position in
    ``tasks`` (1, 2, ...), named after the task. Rater RR becomes rater ``rater-RR``. Each rater's
    segmentations are binarised and combined into one label map per rater.

    Binarisation: a voxel is foreground when its value is at least half of the file's maximum, so
    0/1, 0/255 and soft (float) segmentations all work. A file whose maximum is 0 or less is
    empty.

    Case folders may sit directly under ``source`` (case id = folder name, split
    ``default_split``) or under ``source/Training`` and ``source/Validation`` (splits
    ``training`` and ``test``, case ids ``training-caseNN`` and ``validation-caseNN``). 2D images
    are written as 3D NIfTI with D = 1 and the same affine.

    Args:
        source: the QUBIQ dataset folder, for example ``.../brain-growth``.
        output: destination folder, created if needed.
        tasks: task names such as ``["task01"]``. Default: every task of the first case.
        splits: split name -> inclusive range ``(first, last)`` of case ids, compared as strings.
            When given, it replaces the splits taken from ``Training`` and ``Validation``, and
            cases in no range go to ``default_split``.
        default_split: split of cases that no folder or range assigns.
        modality: modality written to the datalist, for example ``"MR"``.
        progress: show a progress bar over cases.

    Returns:
        The path of ``output/datalist.json``.

    Raises:
        DatalistError: no case folder, a missing task or rater file, a shape mismatch, a
            multi-channel image, or two selected tasks that overlap in a voxel (import one task
            at a time with ``tasks=[...]``).
        ConfigError: a split range is reversed or two ranges contain the same case.
    """
    source = Path(source).expanduser().absolute()
    output = Path(output).expanduser().absolute()
    cases = _find_qubiq_cases(source)
    if not cases:
        raise DatalistError(
            f"QUBIQ folder {source} contains no case folder with an image.nii.gz (directly or under "
            "Training/ and Validation/). Check the path."
        )
    tasks = list(tasks) if tasks else sorted(_qubiq_segmentations(cases[0][2]))
    raters = _qubiq_raters(cases[0][2], tasks)
    ensure_writable_folder(output)
    logger.info("Importing %d QUBIQ cases from %s, tasks %s, %d raters", len(cases), source, tasks, len(raters))

    # Read and check every case before writing the first file, so that a damaged case leaves the
    # output folder as it was. Each case is read twice, one at a time.
    for _, _, folder in tqdm(cases, desc="checking cases", unit="case", disable=not progress):
        _read_qubiq_case(folder, tasks, raters)

    split_cases: dict[str, list[dict]] = {name: [] for name in (splits or {})}
    for case_id, folder_split, folder in tqdm(cases, desc="QUBIQ cases", unit="case", disable=not progress):
        image, affine, label_maps = _read_qubiq_case(folder, tasks, raters)
        image_path = write_nifti_atomic(image, affine, output / "images" / f"{case_id}.nii.gz")
        label_paths = {}
        for rater, label_map in label_maps.items():
            label_path = output / "labels" / f"{case_id}_rater-{rater}.nii.gz"
            label_paths[f"rater-{rater}"] = str(write_nifti_atomic(label_map, affine, label_path))
        if splits:
            split = _split_for(case_id, splits, default_split)
        else:
            split = folder_split or default_split
        split_cases.setdefault(split, []).append(
            {"case": case_id, "subject": case_id, "image": str(image_path), "label": label_paths}
        )

    _warn_empty_splits(split_cases, output)
    datalist = {
        "name": f"QUBIQ {source.name}",
        "description": (
            f"{len(cases)} QUBIQ cases from {source.name} with {len(raters)} raters. Classes are "
            f"the tasks {', '.join(tasks)}. Each rater's segmentation was binarised at half its "
            "maximum."
        ),
        "modality": modality,
        "labels": {"0": "background", **{str(i): task for i, task in enumerate(tasks, start=1)}},
        "raters": [f"rater-{r}" for r in raters],
        "licence": QUBIQ_LICENCE,
        **split_cases,
    }
    return write_datalist(datalist, output / "datalist.json")


def _split_for(identifier: str, splits: dict[str, tuple[str, str]] | None, default_split: str) -> str:
    """Return the split whose inclusive string range contains ``identifier``."""
    matches = []
    for name, bounds in (splits or {}).items():
        if len(bounds) != 2:
            raise ConfigError(f"Split {name!r} has range {bounds!r}. Give a pair (first, last).")
        first, last = bounds
        if first > last:
            raise ConfigError(
                f"Split {name!r} has the reversed range ({first!r}, {last!r}). Give (first, last) "
                "with first <= last as strings."
            )
        if first <= identifier <= last:
            matches.append(name)
    if len(matches) > 1:
        raise ConfigError(
            f"{identifier!r} falls in the ranges of splits {', '.join(matches)}. Make the split "
            "ranges disjoint."
        )
    return matches[0] if matches else default_split


def _warn_empty_splits(split_cases: dict[str, list[dict]], output: Path) -> None:
    for name, cases in split_cases.items():
        if not cases:
            logger.warning("Split %r of the datalist in %s contains no case. Check the split ranges", name, output)


def _find_lidc_nodules(source: Path) -> list[tuple[str, int, Path]]:
    """Return ``(subject, nodule number, folder)`` for every nodule, sorted."""
    if not source.is_dir():
        raise DatalistError(f"LIDC folder {source} not found. Check the path.")
    nodules = []
    for subject_folder in sorted(p for p in source.iterdir() if p.is_dir() and _SUBJECT_PATTERN.match(p.name)):
        for nodule_folder in subject_folder.iterdir():
            match = _NODULE_PATTERN.match(nodule_folder.name)
            if match and nodule_folder.is_dir():
                nodules.append((subject_folder.name, int(match.group(1)), nodule_folder))
    if not nodules:
        raise DatalistError(
            f"LIDC folder {source} contains no nodule folder 'LIDC-IDRI-PPPP/nodule-N'. Point the "
            "importer at the folder that holds the LIDC-IDRI-PPPP folders."
        )
    return sorted(nodules, key=lambda item: (item[0], item[1]))


def _lidc_mask_folders(nodule_folder: Path) -> list[int]:
    """Return the rater numbers R of the ``mask-R`` folders of one nodule, sorted."""
    raters = sorted(
        int(match.group(1))
        for match in (_MASK_PATTERN.match(p.name) for p in nodule_folder.iterdir() if p.is_dir())
        if match
    )
    if not raters:
        raise DatalistError(
            f"LIDC nodule folder {nodule_folder} has no mask-R folder. Every nodule needs one "
            "mask folder per rater."
        )
    return raters


def _lidc_nodule_raters(folder: Path, raters: list[int], first_folder: Path) -> list[int]:
    """Return the rater numbers of a nodule, which must equal ``raters`` (those of ``first_folder``)."""
    nodule_raters = _lidc_mask_folders(folder)
    if nodule_raters != raters:
        raise DatalistError(
            f"LIDC nodule folder {folder} has mask folders for raters {_list_numbers(nodule_raters)}, "
            f"but {first_folder} has {_list_numbers(raters)}. Every nodule needs the same mask-R folders."
        )
    return nodule_raters


def _slice_numbers(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise DatalistError(
            f"LIDC folder {folder} not found. Every nodule needs an images folder and one mask-R "
            "folder per rater. Restore it or remove the nodule."
        )
    numbers = {}
    for path in folder.iterdir():
        match = _SLICE_PATTERN.match(path.name)
        if match:
            numbers[int(match.group(1))] = path
    return numbers


def _read_lidc_nodule(folder: Path, raters: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the image volume ``[H, W, K]`` (uint8) and one 0/1 mask volume per rater."""
    images = _slice_numbers(folder / "images")
    if not images:
        raise DatalistError(f"LIDC folder {folder / 'images'} contains no slice-K.png file.")
    numbers = sorted(images)
    gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if gaps:
        raise DatalistError(
            f"LIDC folder {folder / 'images'} skips slice number(s) {_list_numbers(gaps)} between "
            f"slice-{numbers[0]}.png and slice-{numbers[-1]}.png. Restore the missing slices."
        )

    image_slices = [_read_png(images[k]) for k in numbers]
    shape = image_slices[0].shape
    for k, array in zip(numbers, image_slices):
        if array.shape != shape:
            raise DatalistError(
                f"LIDC slice {images[k]} has size {array.shape}, but slice-{numbers[0]}.png has "
                f"{shape}. All slices of a nodule must have one size."
            )

    masks = []
    for rater in raters:
        mask_folder = folder / f"mask-{rater}"
        mask_files = _slice_numbers(mask_folder)
        missing = [k for k in numbers if k not in mask_files]
        if missing:
            raise DatalistError(
                f"LIDC mask folder {mask_folder} has no file for slice(s) {_list_numbers(missing)} "
                f"(expected {mask_folder / f'slice-{missing[0]}.png'}). Every image slice needs a "
                "mask from every rater."
            )
        extra = sorted(set(mask_files) - set(numbers))
        if extra:
            raise DatalistError(
                f"LIDC mask folder {mask_folder} has slice(s) {_list_numbers(extra)} with no image "
                f"in {folder / 'images'}. Restore the image slice(s) or remove the mask(s)."
            )
        mask_slices = []
        for k in numbers:
            mask = _read_png(mask_files[k])
            if mask.shape != shape:
                raise DatalistError(
                    f"LIDC mask {mask_files[k]} has size {mask.shape}, but image {images[k]} has "
                    f"{shape}. Masks must have the image size."
                )
            values = np.unique(mask)
            unexpected = [int(v) for v in values if v not in (0, 255)]
            if unexpected:
                raise DatalistError(
                    f"LIDC mask {mask_files[k]} contains value(s) {_list_numbers(unexpected)}, "
                    "but only 0 and 255 are valid. Re-export the mask as a binary 8-bit PNG."
                )
            mask_slices.append((mask == 255).astype(np.uint8))
        masks.append(np.stack(mask_slices, axis=-1))

    return np.stack(image_slices, axis=-1), masks


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, ValueError) as error:
        raise DatalistError(f"Cannot read PNG file {path}: {error}. Re-export or restore it.") from error
    if array.ndim != 2 or array.dtype != np.uint8:
        raise DatalistError(
            f"PNG file {path} has shape {array.shape} and type {array.dtype}, but 8-bit "
            "greyscale is expected. Convert it to a single-channel 8-bit PNG."
        )
    return array


def _list_numbers(numbers: Iterable[int]) -> str:
    numbers = list(numbers)
    listed = ", ".join(str(n) for n in numbers[:10])
    return listed + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")


def _find_qubiq_cases(source: Path) -> list[tuple[str, str | None, Path]]:
    """Return ``(case id, split or None, folder)`` for every QUBIQ case folder, sorted."""
    cases: list[tuple[str, str | None, Path]] = []
    split_folders = [(source / name, split) for name, split in _QUBIQ_SPLIT_FOLDERS.items() if (source / name).is_dir()]
    if split_folders:
        for folder, split in split_folders:
            for case_folder in sorted(p for p in folder.iterdir() if _is_qubiq_case(p)):
                cases.append((f"{folder.name.lower()}-{case_folder.name}", split, case_folder))
        return cases
    if source.is_dir():
        for case_folder in sorted(p for p in source.iterdir() if _is_qubiq_case(p)):
            cases.append((case_folder.name, None, case_folder))
    return cases


def _is_qubiq_case(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "image.nii.gz").is_file() or (folder / "image.nii").is_file())


def _qubiq_segmentations(folder: Path) -> dict[str, dict[str, Path]]:
    """Return task -> rater number (``"01"``) -> segmentation file for one case folder."""
    found: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        match = _SEGMENTATION_PATTERN.match(path.name)
        if match:
            found.setdefault(match.group(1), {})[match.group(2)] = path
    return found


def _qubiq_raters(folder: Path, tasks: list[str]) -> list[str]:
    segmentations = _qubiq_segmentations(folder)
    rater_sets = {}
    for task in tasks:
        if task not in segmentations:
            available = ", ".join(sorted(segmentations)) or "none"
            raise DatalistError(
                f"QUBIQ case {folder} has no segmentation for task {task!r} (available: {available}). "
                "Choose tasks that every case has."
            )
        rater_sets[task] = sorted(segmentations[task])
    first_task = tasks[0]
    for task, raters in rater_sets.items():
        if raters != rater_sets[first_task]:
            raise DatalistError(
                f"QUBIQ case {folder}: task {task} has raters {', '.join(raters)} but {first_task} "
                f"has {', '.join(rater_sets[first_task])}. Import tasks with different raters one at "
                "a time with tasks=[...]."
            )
    return rater_sets[first_task]


def _read_qubiq_case(
    folder: Path, tasks: list[str], raters: list[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Return the image ``[H, W, D]``, its affine and one uint8 label map per rater."""
    image_file = folder / "image.nii.gz" if (folder / "image.nii.gz").is_file() else folder / "image.nii"
    image, affine = _load_nifti(image_file)
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    segmentations = _qubiq_segmentations(folder)

    label_maps: dict[str, np.ndarray] = {}
    for rater in raters:
        label_map = None
        for value, task in enumerate(tasks, start=1):
            path = segmentations.get(task, {}).get(rater)
            if path is None:
                raise DatalistError(
                    f"QUBIQ case {folder} has no file {task}_seg{rater}.nii.gz, but the first case "
                    f"has rater {rater} for {task}. Every case needs the same raters per task."
                )
            mask = _binarise(_load_nifti(path)[0])
            _check_qubiq_shapes(image_file, image, path, mask)
            if label_map is None:
                label_map = np.zeros(mask.shape, dtype=np.uint8)
            overlap = mask & (label_map > 0)
            if overlap.any():
                other = tasks[int(label_map[overlap].flat[0]) - 1]
                raise DatalistError(
                    f"QUBIQ case {folder}: {path.name} overlaps {other} of rater {rater} in "
                    f"{int(overlap.sum())} voxel(s), so one label map cannot hold both tasks. Import "
                    "one task at a time with tasks=[...]."
                )
            label_map[mask] = value
        label_maps[rater] = label_map[..., np.newaxis] if label_map.ndim == 2 else label_map

    if image.ndim == 2:
        image = image[..., np.newaxis]
    return image, affine, label_maps


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the data array (with the header's scaling applied) and the affine of a NIfTI file."""
    try:
        nifti = nib.load(path)
        data = np.asanyarray(nifti.dataobj)
    except Exception as error:  # noqa: BLE001 - nibabel raises many types for damaged files (zlib, EOF, OSError)
        raise DatalistError(f"Cannot read NIfTI file {path}: {error}. Re-download or restore it.") from error
    return data, nifti.affine


def _binarise(segmentation: np.ndarray) -> np.ndarray:
    maximum = float(np.max(segmentation)) if segmentation.size else 0.0
    if maximum <= 0:
        return np.zeros(segmentation.shape, dtype=bool)
    return segmentation >= maximum / 2


def _check_qubiq_shapes(image_file: Path, image: np.ndarray, mask_file: Path, mask: np.ndarray) -> None:
    if image.shape == mask.shape:
        return
    if image.ndim == mask.ndim + 1 and image.shape[: mask.ndim] == mask.shape:
        raise DatalistError(
            f"QUBIQ image {image_file} has {image.shape[-1]} channels (shape {image.shape}) and "
            f"segmentation {mask_file.name} has shape {mask.shape}. japc reads single-channel images, so "
            "save the channel you want as image.nii.gz before importing."
        )
    raise DatalistError(
        f"QUBIQ segmentation {mask_file} has shape {mask.shape}, but image {image_file} has "
        f"{image.shape}. Fix or remove the case."
    )
