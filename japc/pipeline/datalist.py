"""Multi-rater datalists: JSON structure, validation, atomic writing and per-case loading checks.

A datalist follows MONAI's decathlon datalists, with one label file per rater::

    {
      "name": "LIDC-IDRI nodules",
      "description": "free text",
      "modality": "CT",
      "labels": {"0": "background", "1": "nodule"},
      "raters": ["rater-0", "rater-1"],
      "licence": "free text shown to users",
      "training": [
        {"case": "LIDC-IDRI-0001_nodule-0", "subject": "LIDC-IDRI-0001",
         "image": "images/LIDC-IDRI-0001_nodule-0.nii.gz",
         "label": {"rater-0": "labels/LIDC-IDRI-0001_nodule-0_rater-0.nii.gz",
                   "rater-1": "labels/LIDC-IDRI-0001_nodule-0_rater-1.nii.gz"}}
      ],
      "test": []
    }

Every top-level key other than ``raters`` whose value is a list is a split. Paths are relative
to the datalist's folder unless absolute. An image is a file that MONAI's ``LoadImage`` reads
(NIfTI, NRRD, PNG) or a folder that contains one DICOM series.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from pydicom.errors import InvalidDicomError

from japc.errors import DatalistError

__all__ = [
    "MultiRaterDatalist",
    "load_datalist",
    "write_datalist",
    "check_case",
    "RESERVED_KEYS",
]

logger = logging.getLogger(__name__)

RESERVED_KEYS = ("name", "description", "modality", "labels", "raters", "licence", "citation")
"""Top-level datalist keys that are never splits."""

_CASE_KEYS = ("case", "subject", "image", "label")
_MAX_LISTED_VALUES = 10

# A step between neighbouring DICOM slices larger than this multiple of the series' smallest
# step means that slices are missing.
_DICOM_GAP_FACTOR = 1.5
_DICOM_TAGS = ["SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient"]


@dataclass
class MultiRaterDatalist:
    """Validated multi-rater datalist with absolute paths.

    Attributes:
        path: the datalist JSON file (absolute).
        name: dataset name.
        modality: imaging modality, for example ``"CT"`` or ``"MR"``.
        classes: class name -> label value, background (value 0) excluded.
        raters: rater ids in the order used for the ``[R, H, W, D]`` label tensors.
        splits: split name -> cases. Each case is a dict with ``case`` (id), ``subject``,
            ``image`` (absolute path as ``str``), ``label`` (rater id -> absolute path as ``str``)
            and any extra keys of the JSON case.
        description: free text about the dataset.
        licence: licence terms shown to users.
        citation: references to cite when using the data.
        origin: what error messages name instead of the datalist file, for cases built from
            files given on the command line (for example ``"Inference input"``). Empty for a
            datalist read from a file.
    """

    path: Path
    name: str
    modality: str
    classes: dict[str, int]
    raters: list[str]
    splits: dict[str, list[dict]]
    description: str = ""
    licence: str = ""
    citation: str = ""
    origin: str = ""

    @property
    def label_values(self) -> list[int]:
        """Declared label values including background 0, sorted."""
        return sorted({0, *self.classes.values()})

    def cases(self, split: str) -> list[dict]:
        """Return deep copies of the cases of ``split``.

        Raises:
            DatalistError: the datalist has no split of that name.
        """
        if split not in self.splits:
            available = ", ".join(sorted(self.splits)) or "none"
            raise DatalistError(
                f"Datalist {self.path} has no split {split!r}. Available splits: {available}. "
                "Choose one of them or add the split to the datalist."
            )
        return copy.deepcopy(self.splits[split])

    def case(self, case_id: str) -> dict:
        """Return a deep copy of the case with id ``case_id``, from whichever split lists it.

        Raises:
            DatalistError: no split lists that case id.
        """
        for cases in self.splits.values():
            for case in cases:
                if case["case"] == case_id:
                    return copy.deepcopy(case)
        raise DatalistError(
            f"Datalist {self.path} has no case {case_id!r} in any split "
            f"({', '.join(sorted(self.splits))}). Check the case id."
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form with absolute paths, as accepted by ``write_datalist``."""
        labels = {"0": "background"}
        labels.update({str(value): name for name, value in sorted(self.classes.items(), key=lambda item: item[1])})
        result: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "modality": self.modality,
            "labels": labels,
            "raters": list(self.raters),
            "licence": self.licence,
            "citation": self.citation,
        }
        result.update(copy.deepcopy(self.splits))
        return result


def load_datalist(path: str | os.PathLike) -> MultiRaterDatalist:
    """Read and validate a multi-rater datalist JSON file.

    Only the structure is checked here. Files are opened by ``check_case``.

    Raises:
        DatalistError: the file is unreadable or not valid JSON, a required key is missing, a
            label value is not an integer, a class name or case id is duplicated, or a case's
            raters differ from the ``raters`` list. The message names the file, the case and
            the value.
    """
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatalistError(
            f"Cannot read datalist {path}: {error}. Check the path and the file permissions."
        ) from error
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatalistError(
            f"Datalist {path} is not valid JSON: {error.msg} at line {error.lineno}, column "
            f"{error.colno}. Fix the syntax at that position."
        ) from error
    return _parse_datalist(raw, path)


def write_datalist(datalist: dict[str, Any] | MultiRaterDatalist, path: str | os.PathLike) -> Path:
    """Validate a datalist and write it as JSON, atomically, with paths relative to its folder.

    Image and label paths inside the datalist's folder are written relative to it, so the folder
    can be moved as a whole. Paths outside it are written as absolute paths. Relative input paths
    are kept as they are, so they are read relative to the datalist's folder. The JSON goes to a
    temporary file in the same folder that then replaces ``path`` with ``os.replace``, so readers
    never see a partly written datalist.

    Args:
        datalist: the JSON form (as in the module docstring) or a ``MultiRaterDatalist``.
        path: destination file. Its folder is created if needed.

    Returns:
        The absolute path written.

    Raises:
        DatalistError: the datalist is invalid (same checks as ``load_datalist``).
    """
    path = Path(path).expanduser().absolute()
    raw = datalist.to_dict() if isinstance(datalist, MultiRaterDatalist) else copy.deepcopy(datalist)
    folder = path.parent

    for key, value in raw.items():
        if key in RESERVED_KEYS or not isinstance(value, list):
            continue
        for case in value:
            if not isinstance(case, dict):
                continue
            if "image" in case:
                case["image"] = _relative_to_folder(case["image"], folder)
            if isinstance(case.get("label"), dict):
                case["label"] = {rater: _relative_to_folder(p, folder) for rater, p in case["label"].items()}

    _parse_datalist(raw, path)
    folder.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder, created with the usual umask permissions.
    temporary = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(temporary, "x", encoding="utf-8") as stream:
            json.dump(raw, stream, indent=2, ensure_ascii=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("Wrote datalist %s", path)
    return path


def check_case(
    case: dict,
    datalist: MultiRaterDatalist,
    affine_tolerance: float = 1e-3,
    allow_any_labels: bool = False,
) -> dict:
    """Load a case's image and rater labels with MONAI and check that they fit together.

    Checks, in this order:

    1. Every file exists.
    2. A DICOM folder contains one series (one SeriesInstanceUID) without missing slices: no step
       between neighbouring slice positions exceeds 1.5 times the series' smallest step (or,
       without positions, no instance number is skipped), and no two files share a position.
    3. MONAI's ``LoadImage`` reads every file, and every file has at least one voxel.
    4. The image and every label have one channel.
    5. The image has no NaN or infinite intensity.
    6. Each label has the image's spatial shape (so a 2D mask for a 3D image fails), and its
       affine is within ``affine_tolerance``.
    7. Each label contains only integer values that the datalist's ``labels`` declares.

    2D images (PNG, 2D NIfTI) become volumes with D = 1 and keep a 4x4 affine. PNG files are
    read by MONAI's PIL reader, which returns ``[W, H]`` (columns first), so images and labels
    given as PNG must both be PNG to share one layout.

    Args:
        case: one case of ``datalist.cases(split)`` (absolute paths). A case with an empty
            ``label`` dict and a datalist without raters loads the image alone.
        datalist: the datalist the case comes from (label values, raters, file name for errors).
        affine_tolerance: maximum absolute difference in mm between the 4x4 affines of the
            image and of each label.
        allow_any_labels: accept any integer label value, not only the declared ones (for
            masks given on the command line, such as 0/255 masks).

    Returns:
        A dict with the extra keys of ``case`` and:

        - ``case``, ``subject``: ids.
        - ``image``: float32 MetaTensor ``[1, H, W, D]``.
        - ``label``: MetaTensor ``[R, H, W, D]`` of integer label maps in the order of
          ``datalist.raters``, on the image's affine. Its dtype is ``uint8`` when the declared
          and present values lie in 0..255 and ``int32`` otherwise.
        - ``raters``: ``datalist.raters``.
        - ``was_2d``: whether the image file had two spatial dimensions.

    Raises:
        DatalistError: a check failed. The message names the datalist, the case, the file and
            the offending value.
    """
    case_id = str(case.get("case", "<no case id>"))
    image_path = Path(case["image"])
    case_labels = case.get("label", {})
    label_paths = {rater: Path(case_labels[rater]) for rater in datalist.raters if rater in case_labels}
    absent_raters = [rater for rater in datalist.raters if rater not in label_paths]
    if absent_raters:
        raise _case_error(
            datalist, case_id, f"no label file for rater(s) {', '.join(absent_raters)}",
            "Add a label path for every rater listed in 'raters'.",
        )
    _check_files_exist(datalist, case_id, image_path, label_paths)

    image, was_2d = _load_volume(datalist, case_id, image_path, "image")
    _check_finite(datalist, case_id, image_path, image)

    label_maps = []
    for rater, label_path in label_paths.items():
        label, label_was_2d = _load_volume(datalist, case_id, label_path, f"label of rater {rater}")
        _check_geometry(
            datalist, case_id, (image_path, image, was_2d), (label_path, label, label_was_2d), affine_tolerance
        )
        _check_label_values(datalist, case_id, label_path, label, allow_any_labels)
        label_maps.append(label.as_tensor()[0])
    labels = _stack_label_maps(label_maps, image, datalist, label_paths)

    result = {key: value for key, value in case.items() if key not in _CASE_KEYS}
    result.update(
        {
            "case": case_id,
            "subject": str(case.get("subject", case_id)),
            "image": image,
            "label": labels,
            "raters": list(datalist.raters),
            "was_2d": was_2d,
        }
    )
    return result


def _stack_label_maps(
    label_maps: list[torch.Tensor], image: MetaTensor, datalist: MultiRaterDatalist, label_paths: dict[str, Path]
) -> MetaTensor:
    """Stack the checked ``[H, W, D]`` label maps into an integer MetaTensor ``[R, H, W, D]``."""
    if label_maps:
        stacked = torch.stack(label_maps)
        lower = min(0.0, float(stacked.min()))
        upper = max(float(max(datalist.label_values)), float(stacked.max()))
    else:
        stacked = torch.zeros((0, *image.shape[1:]))
        lower, upper = 0.0, float(max(datalist.label_values, default=0))
    dtype = torch.uint8 if lower >= 0 and upper <= 255 else torch.int32
    meta = {
        "filename_or_obj": str(next(iter(label_paths.values()))) if label_paths else "",
        "rater_filenames": {rater: str(path) for rater, path in label_paths.items()},
        "spatial_shape": np.asarray(image.shape[1:]),
        "original_affine": image.meta.get("original_affine", image.affine.numpy()),
    }
    return MetaTensor(stacked.round().to(dtype), affine=image.affine.clone(), meta=meta)


def _parse_datalist(raw: Any, path: Path) -> MultiRaterDatalist:
    if not isinstance(raw, dict):
        raise DatalistError(
            f"Datalist {path} must contain a JSON object at top level, found {type(raw).__name__}. "
            "See the datalist format in japc.pipeline.datalist."
        )
    for key in ("labels", "raters"):
        if key not in raw:
            raise DatalistError(f"Datalist {path} has no {key!r} key. Add it (see the datalist format).")

    classes = _parse_labels(raw["labels"], path)
    raters = _parse_raters(raw["raters"], path)
    texts = {key: _parse_text(raw, key, path) for key in ("name", "description", "licence", "citation")}
    modality = _parse_modality(raw.get("modality", ""), path)

    base = path.parent
    splits: dict[str, list[dict]] = {}
    seen: dict[str, tuple[str, dict]] = {}
    for key, value in raw.items():
        if key in RESERVED_KEYS or not isinstance(value, list):
            continue
        cases = []
        ids_in_split: set[str] = set()
        for position, item in enumerate(value):
            case = _parse_case(item, key, position, raters, base, path)
            case_id = case["case"]
            if case_id in ids_in_split:
                raise DatalistError(
                    f"Datalist {path}: case id {case_id!r} appears twice in split {key!r}. "
                    "Give every case a unique id."
                )
            ids_in_split.add(case_id)
            if case_id in seen and _case_files(seen[case_id][1]) != _case_files(case):
                raise DatalistError(
                    f"Datalist {path}: case id {case_id!r} names different files in splits "
                    f"{seen[case_id][0]!r} and {key!r}. Give different cases different ids."
                )
            seen.setdefault(case_id, (key, case))
            cases.append(case)
        splits[key] = cases

    if not splits:
        raise DatalistError(
            f"Datalist {path} has no split, because no top-level key contains a list of cases. "
            "Add for example a 'training' list."
        )
    return MultiRaterDatalist(
        path=path,
        name=texts["name"] or path.parent.name,
        modality=modality,
        classes=classes,
        raters=raters,
        splits=splits,
        description=texts["description"],
        licence=texts["licence"],
        citation=texts["citation"],
    )


def _parse_labels(labels: Any, path: Path) -> dict[str, int]:
    if not isinstance(labels, dict) or not labels:
        raise DatalistError(
            f"Datalist {path}: 'labels' must be a non-empty object mapping label values to class "
            f'names, for example {{"0": "background", "1": "nodule"}}, but found {labels!r}.'
        )
    classes: dict[str, int] = {}
    for key, name in labels.items():
        try:
            value = int(str(key).strip())
        except ValueError:
            value = None
        if value is None or value < 0 or str(value) != str(key).strip():
            raise DatalistError(
                f"Datalist {path}: label value {key!r} (class {name!r}) is not a non-negative "
                "integer. Use integer strings such as \"1\" as the keys of 'labels'."
            )
        if not isinstance(name, str) or not name:
            raise DatalistError(
                f"Datalist {path}: label value {key!r} has class name {name!r}. Give every label "
                "value a non-empty class name."
            )
        if value == 0:
            continue
        if name in classes:
            raise DatalistError(
                f"Datalist {path}: class name {name!r} is used for label values {classes[name]} and "
                f"{value}. Give each class its own name, or merge the values in the label files."
            )
        classes[name] = value
    if not classes:
        raise DatalistError(
            f"Datalist {path}: 'labels' declares only background (value 0). Add at least one class."
        )
    return classes


def _parse_raters(raters: Any, path: Path) -> list[str]:
    if not isinstance(raters, list) or not raters or not all(isinstance(r, str) and r for r in raters):
        raise DatalistError(
            f"Datalist {path}: 'raters' must be a non-empty list of rater ids (strings), but found "
            f"{raters!r}."
        )
    duplicates = sorted({r for r in raters if raters.count(r) > 1})
    if duplicates:
        raise DatalistError(
            f"Datalist {path}: rater id(s) {', '.join(duplicates)} listed more than once in "
            "'raters'. List every rater once."
        )
    return list(raters)


def _parse_text(raw: dict, key: str, path: Path) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise DatalistError(f"Datalist {path}: {key!r} must be a string, found {value!r}.")
    return value


def _parse_modality(modality: Any, path: Path) -> str:
    # Decathlon datalists give {"0": "MRI"} per input channel. japc reads one channel.
    if isinstance(modality, dict) and all(isinstance(v, str) for v in modality.values()):
        return ", ".join(modality[k] for k in sorted(modality))
    if isinstance(modality, str):
        return modality
    raise DatalistError(
        f"Datalist {path}: 'modality' must be a string such as \"CT\", found {modality!r}."
    )


def _parse_case(item: Any, split: str, position: int, raters: list[str], base: Path, path: Path) -> dict:
    where = f"split {split!r}, case #{position}"
    if not isinstance(item, dict):
        raise DatalistError(
            f"Datalist {path}, {where}: expected an object with 'case', 'image' and 'label', "
            f"found {item!r}. Every item of a split must be such an object."
        )
    case_id = item.get("case")
    if not isinstance(case_id, str) or not case_id.strip():
        raise DatalistError(
            f"Datalist {path}, {where}: missing or empty 'case' id (found {case_id!r}). Give every "
            "case a unique string id."
        )
    if "/" in case_id or "\\" in case_id:
        raise DatalistError(
            f"Datalist {path}, case {case_id!r}: the case id contains a path separator. Output "
            "files are named after the case id, so use letters, digits, '-', '_' or '.'."
        )
    where = f"split {split!r}, case {case_id!r}"

    for key in ("image", "label"):
        if key not in item:
            raise DatalistError(f"Datalist {path}, {where}: missing key {key!r}. Add it to the case.")
    image = item["image"]
    if not isinstance(image, str) or not image:
        raise DatalistError(
            f"Datalist {path}, {where}: 'image' must be a file or folder path, found {image!r}."
        )
    labels = item["label"]
    if not isinstance(labels, dict) or not all(isinstance(p, str) and p for p in labels.values()):
        raise DatalistError(
            f"Datalist {path}, {where}: 'label' must be an object mapping each rater id to a label "
            f"file path, found {labels!r}."
        )
    unknown = [rater for rater in labels if rater not in raters]
    if unknown:
        raise DatalistError(
            f"Datalist {path}, {where}: label names rater(s) {', '.join(map(repr, unknown))} that "
            f"are not listed in 'raters' ({', '.join(raters)}). Add them to 'raters' or fix the "
            "rater id."
        )
    absent = [rater for rater in raters if rater not in labels]
    if absent:
        raise DatalistError(
            f"Datalist {path}, {where}: no label for rater(s) {', '.join(map(repr, absent))} listed "
            "in 'raters'. Every case needs one label file per rater. Add the missing path(s)."
        )
    subject = item.get("subject", case_id)
    if not isinstance(subject, str) or not subject:
        raise DatalistError(f"Datalist {path}, {where}: 'subject' must be a non-empty string, found {subject!r}.")

    case = {key: copy.deepcopy(value) for key, value in item.items() if key not in _CASE_KEYS}
    case.update(
        {
            "case": case_id,
            "subject": subject,
            "image": _absolute(image, base),
            "label": {rater: _absolute(labels[rater], base) for rater in raters},
        }
    )
    return case


def _case_files(case: dict) -> tuple:
    return case["image"], tuple(sorted(case["label"].items()))


def _absolute(value: str, base: Path) -> str:
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    return os.path.normpath(candidate)


def _relative_to_folder(value: Any, folder: Path) -> Any:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        return value  # left for _parse_datalist to reject with a clear message
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        return candidate.as_posix()
    try:
        return candidate.relative_to(folder).as_posix()
    except ValueError:
        return str(candidate)


@functools.lru_cache(maxsize=1)
def _loader() -> LoadImage:
    return LoadImage(image_only=True, ensure_channel_first=True)


def _case_error(datalist: MultiRaterDatalist, case_id: str, problem: str, action: str) -> DatalistError:
    source = datalist.origin or f"Datalist {datalist.path}"
    return DatalistError(f"{source}, case {case_id!r}: {problem}. {action}")


def _check_files_exist(
    datalist: MultiRaterDatalist, case_id: str, image_path: Path, label_paths: dict[str, Path]
) -> None:
    missing = [f"image {image_path}"] if not image_path.exists() else []
    missing += [f"label of rater {rater} {p}" for rater, p in label_paths.items() if not p.exists()]
    if missing:
        raise _case_error(
            datalist, case_id, "file(s) not found: " + "; ".join(missing),
            "Fix the path(s) in the datalist or restore the file(s).",
        )


def _load_volume(datalist: MultiRaterDatalist, case_id: str, path: Path, role: str) -> tuple[MetaTensor, bool]:
    """Load one file or DICOM folder as a MetaTensor ``[1, H, W, D]`` with a 4x4 affine.

    Returns:
        The volume and whether the file had two spatial dimensions.
    """
    if path.is_dir():
        _check_dicom_folder(datalist, case_id, path, role)
    try:
        volume = _loader()(str(path))
    except Exception as error:  # noqa: BLE001 - readers raise many unrelated types (nibabel, PIL, ITK, zlib)
        raise _case_error(
            datalist, case_id, f"cannot read {role} {path} ({type(error).__name__}: {error})",
            "Check that it is a complete NIfTI, NRRD or PNG file or a DICOM series folder, and "
            "re-export or re-download it.",
        ) from error

    if volume.numel() == 0:
        shape = tuple(int(size) for size in volume.meta.get("spatial_shape", volume.shape))
        raise _case_error(
            datalist, case_id, f"{role} {path} contains no voxels (spatial shape {shape})",
            "Every dimension needs at least one voxel. Re-export the file.",
        )
    if volume.shape[0] != 1:
        raise _case_error(
            datalist, case_id,
            f"{role} {path} has {volume.shape[0]} channels (shape {tuple(volume.shape)} after "
            "loading, channels first)",
            "japc reads single-channel 2D or 3D images. Split 4D or multi-channel files into one "
            "volume per channel and list the channel you want.",
        )
    if volume.ndim == 3:
        return _as_single_slice_volume(volume), True
    if volume.ndim != 4:
        raise _case_error(
            datalist, case_id, f"{role} {path} has {volume.ndim - 1} spatial dimensions",
            "japc reads 2D or 3D images.",
        )
    return volume, False


def _check_dicom_folder(datalist: MultiRaterDatalist, case_id: str, folder: Path, role: str) -> None:
    """Reject a DICOM folder with several series, missing slices or two files at one position.

    MONAI's readers would silently read only one of several series, and would stack slices
    around a gap with a wrong slice spacing. Files that are not DICOM, or carry no
    SeriesInstanceUID (such as a DICOMDIR index), are ignored here.
    """
    headers = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if header.get("SeriesInstanceUID") is not None:
            headers.append((path, header))
    if not headers:
        return

    series: dict[str, int] = {}
    for _, header in headers:
        uid = str(header.SeriesInstanceUID)
        series[uid] = series.get(uid, 0) + 1
    if len(series) > 1:
        listed = "; ".join(f"{uid} ({count} files)" for uid, count in series.items())
        raise _case_error(
            datalist, case_id, f"{role} folder {folder} contains {len(series)} DICOM series: {listed}",
            "Move each series into a folder of its own and give the folder of the series you want.",
        )

    positions = _dicom_slice_positions(headers)
    if positions is not None:
        _check_dicom_positions(datalist, case_id, folder, role, positions)
        return
    numbers = [header.get("InstanceNumber") for _, header in headers]
    if all(number is not None for number in numbers):
        _check_dicom_instance_numbers(datalist, case_id, folder, role, sorted(int(n) for n in numbers))


def _dicom_slice_positions(headers: list[tuple[Path, Any]]) -> list[tuple[float, Path]] | None:
    """Return (position along the slice normal in mm, file) per file, sorted; None without geometry tags."""
    positions = []
    for path, header in headers:
        position = header.get("ImagePositionPatient")
        orientation = header.get("ImageOrientationPatient")
        if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
            return None
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        positions.append((float(np.dot(normal, np.asarray(position, float))), path))
    return sorted(positions, key=lambda item: item[0])


def _check_dicom_positions(
    datalist: MultiRaterDatalist, case_id: str, folder: Path, role: str, positions: list[tuple[float, Path]]
) -> None:
    if len(positions) < 2:
        return
    values = np.array([position for position, _ in positions])
    steps = np.diff(values)
    duplicate = int(np.argmin(steps))
    if steps[duplicate] < 1e-3:
        raise _case_error(
            datalist, case_id,
            f"{role} folder {folder} has two DICOM files at slice position {values[duplicate]:.3f} mm "
            f"({positions[duplicate][1].name} and {positions[duplicate + 1][1].name})",
            "Remove the duplicate file or split the folder into one folder per series.",
        )
    smallest = float(steps.min())
    gaps = [i for i, step in enumerate(steps) if step > _DICOM_GAP_FACTOR * smallest]
    if gaps:
        listed = ", ".join(f"{values[i]:.3f} to {values[i + 1]:.3f} mm" for i in gaps[:_MAX_LISTED_VALUES])
        raise _case_error(
            datalist, case_id,
            f"{role} folder {folder} misses DICOM slices or has uneven slice spacing: the slice positions "
            f"jump from {listed} although the series' smallest step is {smallest:.3f} mm",
            "Restore the missing slice files, or resample the series to even spacing and export it again.",
        )


def _check_dicom_instance_numbers(
    datalist: MultiRaterDatalist, case_id: str, folder: Path, role: str, numbers: list[int]
) -> None:
    skipped = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if skipped or repeated:
        problem = (
            f"skips instance number(s) {_format_values(skipped)}"
            if skipped
            else f"repeats instance number(s) {_format_values(repeated)}"
        )
        raise _case_error(
            datalist, case_id,
            f"{role} folder {folder} {problem} between {numbers[0]} and {numbers[-1]}, and its files "
            "carry no slice positions to check instead",
            "Restore the missing slice files, or export the series again.",
        )


def _as_single_slice_volume(image: MetaTensor) -> MetaTensor:
    """Turn ``[1, H, W]`` into ``[1, H, W, 1]`` with a 4x4 affine."""
    affine = image.affine
    if affine.shape == (3, 3):
        embedded = torch.eye(4, dtype=affine.dtype)
        embedded[:2, :2] = affine[:2, :2]
        embedded[:2, 3] = affine[:2, 2]
        affine = embedded
    meta = {key: value for key, value in image.meta.items() if key != "affine"}
    volume = MetaTensor(image.as_tensor().unsqueeze(-1), affine=affine.clone(), meta=meta)
    volume.meta["spatial_shape"] = np.asarray(volume.shape[1:])
    return volume


def _check_finite(datalist: MultiRaterDatalist, case_id: str, path: Path, image: MetaTensor) -> None:
    nan_count = int(torch.isnan(image).sum())
    inf_count = int(torch.isinf(image).sum())
    if nan_count or inf_count:
        raise _case_error(
            datalist, case_id,
            f"image {path} contains {nan_count} NaN and {inf_count} infinite intensities",
            "Replace them (for example with the minimum intensity) before using the image.",
        )


def _check_geometry(
    datalist: MultiRaterDatalist,
    case_id: str,
    image_item: tuple[Path, MetaTensor, bool],
    label_item: tuple[Path, MetaTensor, bool],
    affine_tolerance: float,
) -> None:
    """Compare the shape and affine of a label with its image; items are (path, volume, was_2d)."""
    image_path, image, image_was_2d = image_item
    label_path, label, label_was_2d = label_item
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        if label_was_2d != image_was_2d:
            label_kind, image_kind = ("2D", "3D") if label_was_2d else ("3D", "2D")
            raise _case_error(
                datalist, case_id,
                f"label {label_path} is {label_kind} (spatial shape {tuple(label.shape[1:])}) but image "
                f"{image_path} is {image_kind} (spatial shape {tuple(image.shape[1:])})",
                f"Give a {image_kind} label on the image grid.",
            )
        raise _case_error(
            datalist, case_id,
            f"label {label_path} has spatial shape {tuple(label.shape[1:])} but image {image_path} "
            f"has {tuple(image.shape[1:])}",
            "Resample the label onto the image grid or fix the file path.",
        )
    difference = float((label.affine.double() - image.affine.double()).abs().max())
    if difference > affine_tolerance:
        raise _case_error(
            datalist, case_id,
            f"label {label_path} and image {image_path} have different affines (maximum absolute "
            f"difference {difference:.6g} mm, tolerance {affine_tolerance:g} mm)",
            "Resample the label onto the image grid, fix the header, or raise the tolerance if the "
            "difference is a rounding error.",
        )


def _check_label_values(
    datalist: MultiRaterDatalist, case_id: str, path: Path, label: MetaTensor, allow_any_labels: bool
) -> None:
    present = torch.unique(label.as_tensor()).tolist()
    non_integer = [value for value in present if not float(value).is_integer()]
    if non_integer:
        raise _case_error(
            datalist, case_id,
            f"label {path} contains non-integer value(s) {_format_values(non_integer)}",
            "Label files must be integer label maps or 0/1 masks. Threshold soft masks first.",
        )
    if allow_any_labels:
        return
    declared = set(datalist.label_values)
    unexpected = [value for value in present if value not in declared]
    if unexpected:
        raise _case_error(
            datalist, case_id,
            f"label {path} contains value(s) {_format_values(unexpected)} outside the declared "
            f"label values {', '.join(map(str, sorted(declared)))}",
            "Declare these values in 'labels' or fix the label file (binary masks must be 0/1).",
        )


def _format_values(values: list[float]) -> str:
    listed = ", ".join(_format_value(v) for v in values[:_MAX_LISTED_VALUES])
    hidden = len(values) - _MAX_LISTED_VALUES
    return listed + (f" and {hidden} more" if hidden > 0 else "")


def _format_value(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"
