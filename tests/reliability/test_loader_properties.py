"""Property-based checks of the case loader on inputs that ``tests/pipeline`` does not generate.

Whatever PNG mode, label data type or DICOM folder a user gives, ``check_case`` either returns a
consistent case or raises a :class:`JapcError` whose message names the datalist and the case.
It never raises another exception type and never returns NaN intensities or labels that differ
from the file's values.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from japc.errors import JapcError
from japc.pipeline.datalist import MultiRaterDatalist, check_case, load_datalist
from tests.dicom import write_ct_slice

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PNG_MODES = ["L", "I;16", "1", "P", "RGB", "RGBA", "LA"]


def _write_datalist(folder: Path, image: str, labels: dict[str, str], declared: list[int]) -> Path:
    content = {
        "labels": {"0": "background", **{str(value): f"class{value}" for value in declared}},
        "raters": list(labels),
        "training": [{"case": "generated-case", "image": image, "label": labels}],
    }
    path = folder / "datalist.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def _load(path: Path) -> dict:
    datalist = load_datalist(path)
    return check_case(datalist.cases("training")[0], datalist)


def _assert_names_case(error: JapcError) -> None:
    assert "generated-case" in str(error), str(error)
    assert "datalist.json" in str(error), str(error)


def _png(array: np.ndarray, mode: str, path: Path) -> None:
    """Save ``array`` (uint8 values) as a PNG of ``mode``."""
    if mode in ("RGB", "RGBA", "LA"):
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}[mode]
        Image.fromarray(np.repeat(array[..., None], channels, axis=-1), mode=mode).save(path)
    elif mode == "1":
        Image.fromarray(array > 0).save(path)
    elif mode == "I;16":
        Image.fromarray(array.astype(np.uint16)).save(path)
    else:
        image = Image.fromarray(array, mode="L")
        image.convert(mode).save(path)


@PROPERTY_SETTINGS
@given(
    image_mode=st.sampled_from(PNG_MODES),
    label_mode=st.sampled_from(PNG_MODES),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    label_values=st.lists(st.integers(0, 3), min_size=1, max_size=4),
)
def test_png_modes(image_mode: str, label_mode: str, size: tuple[int, int], label_values: list[int]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        image = np.arange(size[0] * size[1], dtype=np.uint8).reshape(size) * 7
        label = np.resize(np.array(label_values, np.uint8), size)
        _png(image, image_mode, folder / "image.png")
        _png(label, label_mode, folder / "label.png")
        try:
            loaded = _load(_write_datalist(folder, "image.png", {"r0": "label.png"}, [1, 2]))
        except JapcError as error:
            _assert_names_case(error)
            return
        assert tuple(loaded["image"].shape[1:]) == tuple(loaded["label"].shape[1:]) == (size[1], size[0], 1)
        assert bool(np.isfinite(np.asarray(loaded["image"])).all())
        assert set(np.unique(np.asarray(loaded["label"])).tolist()) <= {0, 1, 2}


@PROPERTY_SETTINGS
@given(
    dtype=st.sampled_from(["float32", "float64", "int16", "uint8", "int32"]),
    values=st.lists(
        st.one_of(st.integers(-2, 4).map(float), st.sampled_from([0.5, 1.5, np.nan, np.inf, -0.0, 1e-7])),
        min_size=1,
        max_size=5,
    ),
    scale=st.sampled_from([None, 1.0, 0.5, 2.0]),
)
def test_label_data_types(dtype: str, values: list[float], scale: float | None) -> None:
    """Label files stored as floats (with a header scale factor, NaN or fractions) or integers."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        nib.save(nib.Nifti1Image(np.random.default_rng(0).random((4, 3, 2)).astype(np.float32), np.eye(4)), folder / "image.nii.gz")
        stored = np.resize(np.array(values), (4, 3, 2))
        if not np.issubdtype(np.dtype(dtype), np.floating):
            stored = np.nan_to_num(stored, nan=0.0, posinf=0.0).astype(dtype)
        label = nib.Nifti1Image(stored.astype(dtype), np.eye(4))
        if scale is not None:
            label.header.set_slope_inter(scale, 0.0)
        nib.save(label, folder / "label.nii.gz")
        expected = np.asarray(nib.load(folder / "label.nii.gz").dataobj, dtype=np.float64)
        try:
            loaded = _load(_write_datalist(folder, "image.nii.gz", {"r0": "label.nii.gz"}, [1, 2, 3, 4]))
        except JapcError as error:
            _assert_names_case(error)
            return
        assert np.isfinite(expected).all()
        assert np.array_equal(np.asarray(loaded["label"][0], dtype=np.float64), expected)
        assert set(np.unique(expected).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def _write_dicom_slice(path: Path, series_uid: str, number: int, position: float | None, rows: int, columns: int) -> None:
    write_ct_slice(
        path,
        np.full((rows, columns), number, np.uint16),
        series_uid=series_uid,
        study_uid="1.2.3.4",
        instance_number=number,
        position_mm=position,
        pixel_spacing=[0.8, 0.8],
    )


@PROPERTY_SETTINGS
@given(
    slices=st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 6), st.booleans()),  # series, slice index, with position
        min_size=1,
        max_size=6,
    ),
    size=st.sampled_from([(4, 5), (3, 3)]),
    extra_file=st.sampled_from([None, "notes.txt", "empty.dcm"]),
)
def test_dicom_folders(slices: list[tuple[int, int, bool]], size: tuple[int, int], extra_file: str | None) -> None:
    """Folders mixing two series, gaps, duplicates, files without positions and stray files."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory) / "series"
        folder.mkdir()
        uids = ["1.2.3.4.1", "1.2.3.4.2"]
        for file_number, (series, index, with_position) in enumerate(slices):
            position = 2.0 * index if with_position else None
            _write_dicom_slice(folder / f"f{file_number}.dcm", uids[series], index + 1, position, *size)
        if extra_file == "notes.txt":
            (folder / extra_file).write_text("acquisition notes", encoding="utf-8")
        elif extra_file == "empty.dcm":
            (folder / extra_file).write_bytes(b"")
        datalist = MultiRaterDatalist(
            path=Path(directory) / "datalist.json", name="dicom", modality="CT", classes={"organ": 1}, raters=[], splits={}
        )
        try:
            loaded = check_case({"case": "generated-case", "image": str(folder), "label": {}}, datalist)
        except JapcError as error:
            _assert_names_case(error)
            return
        files = {(series, index) for series, index, _ in slices}
        assert len({series for series, _ in files}) == 1
        assert loaded["image"].shape[0] == 1
        assert loaded["image"].shape[-1] == len(files)
        assert bool(np.isfinite(np.asarray(loaded["image"])).all())
