"""DICOM folders that MONAI's readers would misread: several series, missing or duplicate slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from japc.errors import DatalistError
from japc.pipeline.datalist import MultiRaterDatalist, check_case, load_datalist
from tests.dicom import write_ct_slice
from tests.reliability.common import assert_one_error_line, files_under, run_japc

ROWS, COLUMNS = 6, 5
SLICE_STEP_MM = 2.5


def _write_series(
    folder: Path,
    slice_indices: list[int],
    series_uid: str | None = None,
    with_positions: bool = True,
    prefix: str = "image",
) -> str:
    """Write one CT slice file per index ``k`` at z = 2.5 k mm with instance number k + 1; returns the series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study, frame = generate_uid(), generate_uid()
    for k in slice_indices:
        write_ct_slice(
            folder / f"{prefix}-{k:03d}.dcm",
            (np.arange(ROWS * COLUMNS, dtype=np.uint16) + 10 * k).reshape(ROWS, COLUMNS),
            series_uid=series_uid,
            study_uid=study,
            frame_uid=frame,
            patient_id="synthetic",
            instance_number=k + 1,
            position_mm=SLICE_STEP_MM * k if with_positions else None,
            pixel_spacing=[0.7, 0.7],
            slice_thickness_mm=SLICE_STEP_MM,
        )
    return series_uid


def _check_folder(root: Path, folder: Path) -> dict:
    """Run check_case on a case whose image is ``folder`` (no raters, so the image alone is loaded)."""
    datalist = MultiRaterDatalist(
        path=root / "datalist.json", name="dicom", modality="CT", classes={"organ": 1}, raters=[], splits={}
    )
    return check_case({"case": "ct-1", "image": str(folder), "label": {}}, datalist)


def test_complete_series_loads_with_its_spacing(tmp_path: Path) -> None:
    _write_series(tmp_path / "series", [0, 1, 2, 3])
    (tmp_path / "series" / "README.txt").write_text("exported by the scanner", encoding="utf-8")
    image = _check_folder(tmp_path, tmp_path / "series")["image"]
    assert tuple(image.shape) == (1, COLUMNS, ROWS, 4)
    assert abs(float(image.affine[2, 2])) == pytest.approx(SLICE_STEP_MM)


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    first = _write_series(folder, [0, 1, 2], prefix="a")
    second = _write_series(folder, [0, 1], prefix="b")
    with pytest.raises(DatalistError) as raised:
        _check_folder(tmp_path, folder)
    message = str(raised.value)
    for fragment in ("ct-1", str(folder), "2 DICOM series", f"{first} (3 files)", f"{second} (2 files)"):
        assert fragment in message, message


def test_missing_slice_position(tmp_path: Path) -> None:
    """Slices 0, 1, 3, 4: MONAI would stack four slices 2.5 mm apart over a 10 mm range."""
    folder = tmp_path / "gap"
    _write_series(folder, [0, 1, 3, 4])
    with pytest.raises(DatalistError) as raised:
        _check_folder(tmp_path, folder)
    message = str(raised.value)
    for fragment in ("ct-1", str(folder), "misses DICOM slices", "from 2.500 to 7.500 mm", "smallest step is 2.500 mm"):
        assert fragment in message, message


def test_missing_instance_number_without_positions(tmp_path: Path) -> None:
    folder = tmp_path / "gap"
    _write_series(folder, [0, 1, 2, 4, 6], with_positions=False)
    with pytest.raises(DatalistError) as raised:
        _check_folder(tmp_path, folder)
    message = str(raised.value)
    for fragment in ("ct-1", str(folder), "skips instance number(s) 4, 6", "between 1 and 7"):
        assert fragment in message, message


def test_duplicate_slice_position(tmp_path: Path) -> None:
    folder = tmp_path / "twice"
    _write_series(folder, [0, 1, 2])
    shutil.copy(folder / "image-001.dcm", folder / "image-001-copy.dcm")
    with pytest.raises(DatalistError) as raised:
        _check_folder(tmp_path, folder)
    message = str(raised.value)
    for fragment in ("two DICOM files at slice position 2.500 mm", "image-001.dcm", "image-001-copy.dcm"):
        assert fragment in message, message


def test_infer_rejects_query_folder_with_two_series(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "query-series"
    _write_series(folder, [0, 1, 2], prefix="a")
    _write_series(folder, [0, 1, 2], prefix="b")
    support = load_datalist(synthetic_datalist).case("case01")
    arguments = ["infer", str(trained_checkpoint), "--support-image", support["image"], "--support-masks"]
    arguments += [support["label"]["middle"], "--queries", str(folder), "--output", str(tmp_path / "out")]
    status, lines = run_japc(arguments, capsys)
    assert status == 1
    assert_one_error_line(lines, "infer", ["case 'query'", str(folder), "2 DICOM series"])
    assert files_under(tmp_path / "out") == []
