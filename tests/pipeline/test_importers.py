"""Tests of the LIDC and QUBIQ importers on synthetic trees and on the real LIDC slices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from japc.errors import ConfigError, DatalistError
from japc.pipeline.datalist import check_case, load_datalist
from japc.pipeline.importers import detect_layout, import_lidc, import_qubiq

LIDC_SPLITS = {"training": ("LIDC-IDRI-0001", "LIDC-IDRI-0080"), "test": ("LIDC-IDRI-0081", "LIDC-IDRI-0120")}


# --- LIDC -----------------------------------------------------------------------------------


def _lidc_arrays(seed: int, slices: int, size: tuple[int, int] = (6, 7)) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=size, dtype=np.uint8) for _ in range(slices)]
    masks = [[(rng.random(size) > 0.6).astype(np.uint8) * 255 for _ in range(slices)] for _ in range(4)]
    return images, masks


def _write_lidc_nodule(root: Path, subject: str, nodule: int, seed: int, slices: int, first_slice: int = 0):
    folder = root / subject / f"nodule-{nodule}"
    images, masks = _lidc_arrays(seed, slices)
    (folder / "images").mkdir(parents=True)
    for k, array in enumerate(images):
        Image.fromarray(array).save(folder / "images" / f"slice-{first_slice + k}.png")
    for rater, rater_masks in enumerate(masks):
        (folder / f"mask-{rater}").mkdir()
        for k, array in enumerate(rater_masks):
            Image.fromarray(array).save(folder / f"mask-{rater}" / f"slice-{first_slice + k}.png")
    return images, masks


@pytest.fixture
def lidc_tree(tmp_path):
    """Write three nodules of two subjects. Nodule 0 of LIDC-IDRI-0090 has 12 slices to test numeric sorting."""
    source = tmp_path / "lidc"
    arrays = {
        ("LIDC-IDRI-0001", 0): _write_lidc_nodule(source, "LIDC-IDRI-0001", 0, seed=1, slices=3),
        ("LIDC-IDRI-0001", 1): _write_lidc_nodule(source, "LIDC-IDRI-0001", 1, seed=2, slices=2),
        ("LIDC-IDRI-0090", 0): _write_lidc_nodule(source, "LIDC-IDRI-0090", 0, seed=3, slices=12),
    }
    return source, arrays


def test_lidc_import_voxel_values(lidc_tree, tmp_path):
    source, arrays = lidc_tree
    path = import_lidc(source, tmp_path / "out", progress=False)

    assert path == tmp_path / "out" / "datalist.json"
    datalist = load_datalist(path)
    assert datalist.raters == ["rater-0", "rater-1", "rater-2", "rater-3"]
    assert datalist.classes == {"nodule": 1}
    assert datalist.modality == "CT"
    assert "identity affine" in datalist.description
    assert "CC BY 3.0" in datalist.licence
    assert "Armato" in datalist.citation
    assert [c["case"] for c in datalist.cases("training")] == [
        "LIDC-IDRI-0001_nodule-0",
        "LIDC-IDRI-0001_nodule-1",
        "LIDC-IDRI-0090_nodule-0",
    ]

    for (subject, nodule), (images, masks) in arrays.items():
        case = datalist.case(f"{subject}_nodule-{nodule}")
        assert case["subject"] == subject
        volume = nib.load(case["image"])
        assert volume.get_data_dtype() == np.uint8
        assert np.array_equal(volume.affine, np.eye(4))
        data = np.asarray(volume.dataobj)
        assert data.shape == (6, 7, len(images))
        for k, array in enumerate(images):
            assert np.array_equal(data[:, :, k], array)
        for rater in range(4):
            label = np.asarray(nib.load(case["label"][f"rater-{rater}"]).dataobj)
            assert label.dtype == np.uint8
            assert set(np.unique(label).tolist()) <= {0, 1}
            for k, array in enumerate(masks[rater]):
                assert np.array_equal(label[:, :, k], array // 255)


def test_lidc_import_splits_by_subject(lidc_tree, tmp_path):
    source, _ = lidc_tree
    datalist = load_datalist(import_lidc(source, tmp_path / "out", splits=LIDC_SPLITS, progress=False))
    assert [c["case"] for c in datalist.cases("training")] == ["LIDC-IDRI-0001_nodule-0", "LIDC-IDRI-0001_nodule-1"]
    assert [c["case"] for c in datalist.cases("test")] == ["LIDC-IDRI-0090_nodule-0"]


def test_lidc_default_split_for_unranged_subjects(lidc_tree, tmp_path):
    source, _ = lidc_tree
    splits = {"test": ("LIDC-IDRI-0050", "LIDC-IDRI-0099")}
    datalist = load_datalist(import_lidc(source, tmp_path / "out", splits=splits, default_split="pool", progress=False))
    assert sorted(datalist.splits) == ["pool", "test"]
    assert len(datalist.cases("pool")) == 2
    assert [c["subject"] for c in datalist.cases("test")] == ["LIDC-IDRI-0090"]


def test_lidc_import_checks_load(lidc_tree, tmp_path):
    source, arrays = lidc_tree
    datalist = load_datalist(import_lidc(source, tmp_path / "out", progress=False))
    loaded = check_case(datalist.case("LIDC-IDRI-0090_nodule-0"), datalist)
    images, masks = arrays[("LIDC-IDRI-0090", 0)]
    assert tuple(loaded["label"].shape) == (4, 6, 7, 12)
    assert np.array_equal(loaded["image"][0, :, :, 11].numpy(), images[11].astype(np.float32))
    assert np.array_equal(loaded["label"][3, :, :, 10].numpy(), masks[3][10] // 255)


def test_lidc_import_leaves_no_temporary_files(lidc_tree, tmp_path):
    source, _ = lidc_tree
    import_lidc(source, tmp_path / "out", progress=False)
    hidden = [p for p in (tmp_path / "out").rglob(".*")]
    assert hidden == []
    assert len(list((tmp_path / "out" / "labels").iterdir())) == 12


def _remove_mask_slice(source: Path) -> str:
    (source / "LIDC-IDRI-0001" / "nodule-1" / "mask-2" / "slice-1.png").unlink()
    return "mask-2"


def _remove_image_slice(source: Path) -> str:
    (source / "LIDC-IDRI-0090" / "nodule-0" / "images" / "slice-5.png").unlink()
    return "skips slice number(s) 5"


def _resize_mask(source: Path) -> str:
    Image.fromarray(np.zeros((6, 8), dtype=np.uint8)).save(source / "LIDC-IDRI-0001" / "nodule-0" / "mask-1" / "slice-2.png")
    return "(6, 8)"


def _grey_mask(source: Path) -> str:
    mask = np.zeros((6, 7), dtype=np.uint8)
    mask[2, 3] = 128
    Image.fromarray(mask).save(source / "LIDC-IDRI-0001" / "nodule-0" / "mask-3" / "slice-0.png")
    return "value(s) 128"


def _remove_mask_folder(source: Path) -> str:
    for path in (source / "LIDC-IDRI-0090" / "nodule-0" / "mask-3").iterdir():
        path.unlink()
    (source / "LIDC-IDRI-0090" / "nodule-0" / "mask-3").rmdir()
    return "same mask-R folders"


LIDC_ERRORS = [
    ("missing mask slice", _remove_mask_slice, "slice-1.png"),
    ("missing image slice", _remove_image_slice, "LIDC-IDRI-0090/nodule-0/images"),
    ("mask size mismatch", _resize_mask, "LIDC-IDRI-0001/nodule-0/mask-1/slice-2.png"),
    ("mask value not 0 or 255", _grey_mask, "LIDC-IDRI-0001/nodule-0/mask-3/slice-0.png"),
    ("missing mask folder", _remove_mask_folder, "LIDC-IDRI-0090/nodule-0"),
]


@pytest.mark.parametrize(("edit", "file_fragment"), [e[1:] for e in LIDC_ERRORS], ids=[e[0] for e in LIDC_ERRORS])
def test_lidc_import_errors(lidc_tree, tmp_path, edit, file_fragment):
    source, _ = lidc_tree
    value_fragment = edit(source)
    with pytest.raises(DatalistError) as raised:
        import_lidc(source, tmp_path / "out", progress=False)
    message = str(raised.value)
    assert file_fragment in message
    assert value_fragment in message
    assert not (tmp_path / "out" / "datalist.json").exists()


def test_lidc_non_consecutive_slice_numbers(tmp_path):
    source = tmp_path / "lidc"
    _write_lidc_nodule(source, "LIDC-IDRI-0001", 0, seed=4, slices=2)
    _write_lidc_nodule(source, "LIDC-IDRI-0002", 0, seed=5, slices=1, first_slice=2)
    images = source / "LIDC-IDRI-0002" / "nodule-0" / "images"
    Image.fromarray(np.zeros((6, 7), dtype=np.uint8)).save(images / "slice-0.png")
    with pytest.raises(DatalistError, match=r"skips slice number\(s\) 1 between slice-0.png and slice-2.png"):
        import_lidc(source, tmp_path / "out", progress=False)


def test_lidc_empty_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no nodule folder"):
        import_lidc(tmp_path / "empty", tmp_path / "out", progress=False)


def test_lidc_overlapping_split_ranges(lidc_tree, tmp_path):
    source, _ = lidc_tree
    splits = {"a": ("LIDC-IDRI-0001", "LIDC-IDRI-0050"), "b": ("LIDC-IDRI-0001", "LIDC-IDRI-0002")}
    with pytest.raises(ConfigError, match="'LIDC-IDRI-0001' falls in the ranges of splits a, b"):
        import_lidc(source, tmp_path / "out", splits=splits, progress=False)


def test_lidc_real_data(lidc_root, tmp_path):
    path = import_lidc(lidc_root, tmp_path / "lidc", splits=LIDC_SPLITS, progress=False)
    datalist = load_datalist(path)

    cases = datalist.cases("training") + datalist.cases("test")
    assert len(cases) == 339
    assert datalist.raters == ["rater-0", "rater-1", "rater-2", "rater-3"]
    assert all("LIDC-IDRI-0001" <= c["subject"] <= "LIDC-IDRI-0080" for c in datalist.cases("training"))
    assert all("LIDC-IDRI-0081" <= c["subject"] <= "LIDC-IDRI-0120" for c in datalist.cases("test"))
    subjects_on_disk = {p.name for p in lidc_root.iterdir() if p.is_dir() and p.name.startswith("LIDC-IDRI-")}
    assert {c["subject"] for c in cases} == subjects_on_disk

    first = datalist.cases("training")[0]
    assert first["case"] == "LIDC-IDRI-0001_nodule-0"
    nodule = lidc_root / "LIDC-IDRI-0001" / "nodule-0"
    slice_files = sorted((nodule / "images").glob("slice-*.png"), key=lambda p: int(p.stem.split("-")[1]))
    expected = np.stack([np.asarray(Image.open(p)) for p in slice_files], axis=-1)
    assert np.array_equal(np.asarray(nib.load(first["image"]).dataobj), expected)
    for rater in range(4):
        masks = np.stack([np.asarray(Image.open(nodule / f"mask-{rater}" / p.name)) for p in slice_files], axis=-1)
        assert np.array_equal(np.asarray(nib.load(first["label"][f"rater-{rater}"]).dataobj), masks // 255)


# --- QUBIQ ----------------------------------------------------------------------------------


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.5, 0.5, 3.0, 1.0]) if affine is None else affine), path)


def _qubiq_case(folder: Path, shape=(6, 5, 4)) -> dict[str, np.ndarray]:
    """Write one case with task01 in three encodings (0/1, 0/255, soft float) and a disjoint task02."""
    _save(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), folder / "image.nii.gz")
    task01 = np.zeros(shape, dtype=np.float32)
    task01[1:3, 1:3] = 1.0
    soft = task01 * 0.8
    soft[3, 3] = 0.39  # below half of the maximum 0.8
    soft[0, 0] = 0.41  # above half of the maximum
    _save(task01.astype(np.uint8), folder / "task01_seg01.nii.gz")
    _save((task01 * 255).astype(np.uint8), folder / "task01_seg02.nii.gz")
    _save(soft, folder / "task01_seg03.nii.gz")
    task02 = np.zeros(shape, dtype=np.uint8)
    task02[4:, 3:] = 1
    for rater in ("01", "02", "03"):
        _save(task02, folder / f"task02_seg{rater}.nii.gz")
    expected_soft = (task01 > 0).copy()
    expected_soft[0, 0] = True
    return {"01": task01 > 0, "02": task01 > 0, "03": expected_soft, "task02": task02 > 0}


def test_qubiq_binarisation_and_classes(tmp_path):
    expected = _qubiq_case(tmp_path / "qubiq" / "case01")
    _qubiq_case(tmp_path / "qubiq" / "case02")
    path = import_qubiq(tmp_path / "qubiq", tmp_path / "out", progress=False)

    datalist = load_datalist(path)
    assert datalist.classes == {"task01": 1, "task02": 2}
    assert datalist.raters == ["rater-01", "rater-02", "rater-03"]
    assert [c["case"] for c in datalist.cases("training")] == ["case01", "case02"]
    case = datalist.case("case01")
    for rater in ("01", "02", "03"):
        label = np.asarray(nib.load(case["label"][f"rater-{rater}"]).dataobj)
        assert np.array_equal(label == 1, expected[rater]), rater
        assert np.array_equal(label == 2, expected["task02"]), rater
    image = nib.load(case["image"])
    assert np.allclose(image.affine, np.diag([0.5, 0.5, 3.0, 1.0]))
    loaded = check_case(case, datalist)
    assert tuple(loaded["label"].shape) == (3, 6, 5, 4)


def test_qubiq_single_task(tmp_path):
    _qubiq_case(tmp_path / "qubiq" / "case01")
    datalist = load_datalist(import_qubiq(tmp_path / "qubiq", tmp_path / "out", tasks=["task02"], progress=False))
    assert datalist.classes == {"task02": 1}
    label = np.asarray(nib.load(datalist.case("case01")["label"]["rater-02"]).dataobj)
    assert int(label.sum()) == 2 * 2 * 4


def test_qubiq_overlapping_tasks_rejected(tmp_path):
    folder = tmp_path / "qubiq" / "case01"
    _qubiq_case(folder)
    overlapping = np.zeros((6, 5, 4), dtype=np.uint8)
    overlapping[2, 2, 1] = 1
    _save(overlapping, folder / "task02_seg02.nii.gz")
    with pytest.raises(DatalistError) as raised:
        import_qubiq(tmp_path / "qubiq", tmp_path / "out", progress=False)
    message = str(raised.value)
    assert "task02_seg02.nii.gz" in message
    assert "1 voxel(s)" in message
    assert "tasks=[...]" in message


def test_qubiq_2d_case(tmp_path):
    folder = tmp_path / "brain-growth" / "case01"
    affine = np.diag([0.9, 0.8, 1.0, 1.0])
    image = np.arange(30, dtype=np.float32).reshape(6, 5)
    _save(image, folder / "image.nii.gz", affine)
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[2:4, 1:3] = 255
    _save(mask, folder / "task01_seg01.nii.gz", affine)
    datalist = load_datalist(import_qubiq(tmp_path / "brain-growth", tmp_path / "out", progress=False))

    case = datalist.case("case01")
    written = nib.load(case["image"])
    assert written.shape == (6, 5, 1)
    assert np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj)[:, :, 0], image)
    label = np.asarray(nib.load(case["label"]["rater-01"]).dataobj)
    assert label.shape == (6, 5, 1)
    assert np.array_equal(label[:, :, 0], (mask > 0).astype(np.uint8))
    assert datalist.name == "QUBIQ brain-growth"


def test_qubiq_training_validation_splits(tmp_path):
    _qubiq_case(tmp_path / "qubiq" / "Training" / "case01")
    _qubiq_case(tmp_path / "qubiq" / "Training" / "case02")
    _qubiq_case(tmp_path / "qubiq" / "Validation" / "case01")
    datalist = load_datalist(import_qubiq(tmp_path / "qubiq", tmp_path / "out", progress=False))
    assert [c["case"] for c in datalist.cases("training")] == ["training-case01", "training-case02"]
    assert [c["case"] for c in datalist.cases("test")] == ["validation-case01"]


def test_qubiq_split_ranges_replace_folders(tmp_path):
    for name in ("case01", "case02", "case03"):
        _qubiq_case(tmp_path / "qubiq" / name)
    splits = {"test": ("case03", "case09")}
    datalist = load_datalist(import_qubiq(tmp_path / "qubiq", tmp_path / "out", splits=splits, progress=False))
    assert [c["case"] for c in datalist.cases("training")] == ["case01", "case02"]
    assert [c["case"] for c in datalist.cases("test")] == ["case03"]


def test_qubiq_multichannel_image_rejected(tmp_path):
    folder = tmp_path / "qubiq" / "case01"
    _save(np.zeros((6, 5, 4), dtype=np.float32), folder / "image.nii.gz")
    _save(np.zeros((6, 5), dtype=np.uint8), folder / "task01_seg01.nii.gz")
    with pytest.raises(DatalistError, match="4 channels"):
        import_qubiq(tmp_path / "qubiq", tmp_path / "out", progress=False)


def test_qubiq_missing_rater_file(tmp_path):
    _qubiq_case(tmp_path / "qubiq" / "case01")
    _qubiq_case(tmp_path / "qubiq" / "case02")
    (tmp_path / "qubiq" / "case02" / "task01_seg03.nii.gz").unlink()
    with pytest.raises(DatalistError, match="task01_seg03.nii.gz"):
        import_qubiq(tmp_path / "qubiq", tmp_path / "out", progress=False)


def test_detect_layout(lidc_tree, tmp_path):
    source, _ = lidc_tree
    assert detect_layout(source) == "lidc"
    _qubiq_case(tmp_path / "qubiq" / "Training" / "case01")
    assert detect_layout(tmp_path / "qubiq") == "qubiq"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DatalistError, match="matches no known layout"):
        detect_layout(tmp_path / "other")


def test_datalist_json_written_last(lidc_tree, tmp_path):
    source, _ = lidc_tree
    path = import_lidc(source, tmp_path / "out", progress=False)
    datalist_time = path.stat().st_mtime_ns
    volumes = list((tmp_path / "out").rglob("*.nii.gz"))
    assert max(p.stat().st_mtime_ns for p in volumes) <= datalist_time
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored["training"][0]["image"] == "images/LIDC-IDRI-0001_nodule-0.nii.gz"
