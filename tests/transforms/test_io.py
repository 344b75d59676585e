"""Tests of loading PNG, 2D NIfTI and DICOM series cases through check_case and LoadMultiRaterCased."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from japc.errors import DatalistError
from japc.pipeline.datalist import check_case, load_datalist
from japc.transforms.io import LoadMultiRaterCased
from tests.dicom import write_ct_slice

ROWS, COLUMNS = 4, 5
PIXEL_SPACING = (0.5, 0.75)  # DICOM order: row spacing, column spacing, in mm
SLICE_STEP_MM = 2.5


def _write_datalist(root: Path, image: str, labels: dict[str, str]) -> Path:
    datalist = {
        "labels": {"0": "background", "1": "structure"},
        "raters": list(labels),
        "training": [{"case": "case-1", "image": image, "label": labels}],
    }
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist), encoding="utf-8")
    return path


def _slice_pixels(k: int) -> np.ndarray:
    return (np.arange(ROWS * COLUMNS, dtype=np.uint16).reshape(ROWS, COLUMNS) + 100 * k).astype(np.uint16)


def _write_dicom_series(folder: Path, slices: int = 3) -> None:
    """Write one CT series whose file numbers fall as the slice position rises, to test sorting."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        write_ct_slice(
            folder / f"slice-{slices - 1 - k}.dcm",
            _slice_pixels(k),
            series_uid=series,
            study_uid=study,
            frame_uid=frame,
            patient_id="synthetic",
            instance_number=k + 1,
            position_mm=SLICE_STEP_MM * k,
            pixel_spacing=PIXEL_SPACING,
            slice_thickness_mm=SLICE_STEP_MM,
        )


def test_png_case_becomes_single_slice(tmp_path):
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 10
    mask = np.zeros((3, 4), dtype=np.uint8)
    mask[1, 2:] = 1
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    datalist = load_datalist(_write_datalist(tmp_path, "image.png", {"rater-0": "mask.png"}))

    loaded = check_case(datalist.cases("training")[0], datalist)

    # MONAI's PIL reader puts columns first: [1, W, H] becomes [1, W, H, 1].
    assert tuple(loaded["image"].shape) == (1, 4, 3, 1)
    assert np.array_equal(loaded["image"][0, :, :, 0].numpy(), image.T)
    assert tuple(loaded["label"].shape) == (1, 4, 3, 1)
    assert np.array_equal(loaded["label"][0, :, :, 0].numpy(), mask.T)
    assert tuple(loaded["image"].affine.shape) == (4, 4)
    assert loaded["was_2d"] is True


def test_2d_nifti_keeps_spacing(tmp_path):
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    mask = (image > 9).astype(np.uint8)
    affine = np.diag([0.7, 0.6, 1.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 0.0]
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    datalist = load_datalist(_write_datalist(tmp_path, "image.nii.gz", {"rater-0": "mask.nii.gz"}))

    loaded = check_case(datalist.cases("training")[0], datalist)

    assert tuple(loaded["image"].shape) == (1, 4, 5, 1)
    assert np.array_equal(loaded["image"][0, :, :, 0].numpy(), image)
    assert np.array_equal(loaded["label"][0, :, :, 0].numpy(), mask)
    assert np.allclose(loaded["image"].affine.numpy(), affine)
    assert np.allclose(loaded["label"].affine.numpy(), affine)


def test_dicom_series_folder(tmp_path):
    _write_dicom_series(tmp_path / "series")
    mask = np.zeros((COLUMNS, ROWS, 3), dtype=np.uint8)
    mask[1:3, 1:3, 2] = 1
    nib.save(nib.Nifti1Image(mask, _dicom_affine()), tmp_path / "mask.nii.gz")
    datalist = load_datalist(_write_datalist(tmp_path, "series", {"rater-0": "mask.nii.gz"}))

    loaded = LoadMultiRaterCased(datalist)(datalist.cases("training")[0])
    image = loaded["image"]

    # The layout is [1, columns, rows, slices], with slices ordered by ImagePositionPatient.
    assert tuple(image.shape) == (1, COLUMNS, ROWS, 3)
    for k in range(3):
        assert np.array_equal(image[0, :, :, k].numpy(), _slice_pixels(k).T.astype(np.float32))
    spacing = np.abs(np.diag(image.affine.numpy())[:3])
    assert np.allclose(spacing, [PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_STEP_MM])
    assert image.affine[2, 2] > 0
    assert np.array_equal(loaded["label"][0].numpy(), mask)
    assert loaded["was_2d"] is False


def _dicom_affine() -> np.ndarray:
    """RAS affine of the synthetic series: LPS x and y flip sign, z rises with the slice index."""
    return np.diag([-PIXEL_SPACING[1], -PIXEL_SPACING[0], SLICE_STEP_MM, 1.0])


def test_dicom_label_with_lps_affine_rejected(tmp_path):
    _write_dicom_series(tmp_path / "series")
    mask = np.zeros((COLUMNS, ROWS, 3), dtype=np.uint8)
    lps_affine = np.diag([PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_STEP_MM, 1.0])
    nib.save(nib.Nifti1Image(mask, lps_affine), tmp_path / "mask.nii.gz")
    datalist = load_datalist(_write_datalist(tmp_path, "series", {"rater-0": "mask.nii.gz"}))

    with pytest.raises(DatalistError) as raised:
        check_case(datalist.cases("training")[0], datalist)
    assert "1.5 mm" in str(raised.value)
    assert "mask.nii.gz" in str(raised.value)


def test_dicom_pixels_read_back_with_pydicom(tmp_path):
    _write_dicom_series(tmp_path / "series")
    first = pydicom.dcmread(tmp_path / "series" / "slice-2.dcm")
    assert np.array_equal(first.pixel_array, _slice_pixels(0))
    assert [float(v) for v in first.ImagePositionPatient] == [0.0, 0.0, 0.0]
