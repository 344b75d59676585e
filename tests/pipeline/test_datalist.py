"""Tests of the multi-rater datalist: parsing, validation messages, writing and case checks."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose

from japc.errors import DatalistError
from japc.pipeline.datalist import MultiRaterDatalist, check_case, load_datalist, write_datalist
from japc.transforms.io import LoadMultiRaterCased

SHAPE = (4, 5, 3)
AFFINE = np.diag([0.8, 0.9, 2.5, 1.0])
RATERS = ["rater-a", "rater-b"]


def _save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _image_array() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)


def _label_arrays() -> dict[str, np.ndarray]:
    first = np.zeros(SHAPE, dtype=np.uint8)
    first[1:3, 1:4, 0:2] = 1
    second = np.zeros(SHAPE, dtype=np.uint8)
    second[1:4, 2:4, 1:3] = 1
    second[0, 0, 0] = 2
    return {"rater-a": first, "rater-b": second}


def _make_dataset(root: Path) -> Path:
    """Write one case (two raters, label values 0, 1, 2) and return the datalist path."""
    _save(_image_array(), root / "images" / "case-1.nii.gz")
    labels = {}
    for rater, array in _label_arrays().items():
        _save(array, root / "labels" / f"case-1_{rater}.nii.gz")
        labels[rater] = f"labels/case-1_{rater}.nii.gz"
    datalist = {
        "name": "synthetic",
        "modality": "CT",
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "raters": list(RATERS),
        "training": [{"case": "case-1", "subject": "subject-1", "image": "images/case-1.nii.gz", "label": labels}],
    }
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2), encoding="utf-8")
    return path


def _edit_json(path: Path, edit) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    edit(raw)
    path.write_text(json.dumps(raw), encoding="utf-8")


def _load_and_check(path: Path, tolerance: float = 1e-3) -> dict:
    datalist = load_datalist(path)
    return check_case(datalist.cases("training")[0], datalist, affine_tolerance=tolerance)


# Each entry: id, edit of the dataset, the call that must fail, expected message fragments.
# Fragments name the case id, the file and the offending value.
def _remove_image(root):
    (root / "images" / "case-1.nii.gz").unlink()


def _remove_label(root):
    (root / "labels" / "case-1_rater-b.nii.gz").unlink()


def _shrink_label(root):
    _save(np.zeros((4, 5, 2), dtype=np.uint8), root / "labels" / "case-1_rater-b.nii.gz")


def _shift_label(root):
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.25
    _save(_label_arrays()["rater-b"], root / "labels" / "case-1_rater-b.nii.gz", shifted)


def _undeclared_value(root):
    array = _label_arrays()["rater-a"]
    array[3, 4, 2] = 7
    _save(array, root / "labels" / "case-1_rater-a.nii.gz")


def _soft_label(root):
    array = _label_arrays()["rater-a"].astype(np.float32)
    array[3, 4, 2] = 0.5
    _save(array, root / "labels" / "case-1_rater-a.nii.gz")


def _list_third_rater(root):
    _edit_json(root / "datalist.json", lambda raw: raw["raters"].append("rater-c"))


def _unknown_rater(root):
    def edit(raw):
        raw["training"][0]["label"]["rater-x"] = "labels/case-1_rater-a.nii.gz"

    _edit_json(root / "datalist.json", edit)


def _break_json(root):
    (root / "datalist.json").write_text('{\n  "name": "x",\n  "raters": ["a" "b"]\n}\n', encoding="utf-8")


def _nan_image(root):
    array = _image_array()
    array[0, 0, 0] = np.nan
    array[1, 1, 1] = np.nan
    array[2, 2, 2] = np.inf
    _save(array, root / "images" / "case-1.nii.gz")


def _four_d_image(root):
    _save(np.zeros((*SHAPE, 2), dtype=np.float32), root / "images" / "case-1.nii.gz")


def _truncate_image(root):
    path = root / "images" / "case-1.nii.gz"
    _save(np.random.default_rng(0).random((20, 20, 10)).astype(np.float32), path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _text_image(root):
    (root / "images" / "notes.txt").write_text("not an image", encoding="utf-8")

    def edit(raw):
        raw["training"][0]["image"] = "images/notes.txt"

    _edit_json(root / "datalist.json", edit)


def _duplicate_case(root):
    _edit_json(root / "datalist.json", lambda raw: raw["training"].append(dict(raw["training"][0])))


def _text_label_value(root):
    _edit_json(root / "datalist.json", lambda raw: raw["labels"].update({"one": "organ-2"}))


def _duplicate_class(root):
    _edit_json(root / "datalist.json", lambda raw: raw["labels"].update({"3": "organ"}))


def _missing_labels_key(root):
    _edit_json(root / "datalist.json", lambda raw: raw.pop("labels"))


ERROR_CASES = [
    ("missing image", _remove_image, "check", ["case-1", "case-1.nii.gz", "not found"]),
    ("missing label", _remove_label, "check", ["case-1", "case-1_rater-b.nii.gz", "not found"]),
    ("shape mismatch", _shrink_label, "check", ["case-1", "case-1_rater-b.nii.gz", "(4, 5, 2)", "(4, 5, 3)"]),
    ("affine mismatch", _shift_label, "check", ["case-1", "case-1_rater-b.nii.gz", "0.25 mm"]),
    ("undeclared label value", _undeclared_value, "check", ["case-1", "case-1_rater-a.nii.gz", "value(s) 7"]),
    ("non-integer label value", _soft_label, "check", ["case-1", "case-1_rater-a.nii.gz", "0.5"]),
    ("rater listed but absent", _list_third_rater, "load", ["case-1", "datalist.json", "'rater-c'"]),
    ("unknown rater in case", _unknown_rater, "load", ["case-1", "datalist.json", "'rater-x'"]),
    ("invalid json", _break_json, "load", ["datalist.json", "line 3", "column 18"]),
    ("nan intensities", _nan_image, "check", ["case-1", "case-1.nii.gz", "2 NaN", "1 infinite"]),
    ("4d image", _four_d_image, "check", ["case-1", "case-1.nii.gz", "2 channels"]),
    ("corrupt nifti", _truncate_image, "check", ["case-1", "case-1.nii.gz", "cannot read", "EOFError"]),
    ("not an image", _text_image, "check", ["case-1", "notes.txt", "cannot read"]),
    ("duplicate case id", _duplicate_case, "load", ["case-1", "datalist.json", "appears twice"]),
    ("label value not integer", _text_label_value, "load", ["datalist.json", "'one'", "organ-2"]),
    ("duplicate class name", _duplicate_class, "load", ["datalist.json", "'organ'", "1 and 3"]),
    ("missing labels key", _missing_labels_key, "load", ["datalist.json", "'labels'"]),
]


@pytest.mark.parametrize(
    ("edit", "call", "fragments"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_datalist_error_messages(tmp_path, edit, call, fragments):
    path = _make_dataset(tmp_path)
    edit(tmp_path)
    with pytest.raises(DatalistError) as raised:
        if call == "load":
            load_datalist(path)
        else:
            _load_and_check(path)
    message = str(raised.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_unknown_split_lists_available(tmp_path):
    datalist = load_datalist(_make_dataset(tmp_path))
    with pytest.raises(DatalistError) as raised:
        datalist.cases("validation")
    message = str(raised.value)
    assert "'validation'" in message
    assert "training" in message
    assert "datalist.json" in message


def test_unreadable_datalist_names_file(tmp_path):
    with pytest.raises(DatalistError) as raised:
        load_datalist(tmp_path / "absent.json")
    assert "absent.json" in str(raised.value)


def test_affine_difference_below_tolerance_accepted(tmp_path):
    path = _make_dataset(tmp_path)
    shifted = AFFINE.copy()
    shifted[1, 3] = 5e-4
    _save(_label_arrays()["rater-b"], tmp_path / "labels" / "case-1_rater-b.nii.gz", shifted)

    loaded = _load_and_check(path, tolerance=1e-3)
    assert torch.allclose(loaded["label"].affine, torch.as_tensor(AFFINE, dtype=torch.float64))

    with pytest.raises(DatalistError, match="0.0005"):
        _load_and_check(path, tolerance=1e-4)


def test_load_datalist_resolves_paths(tmp_path):
    datalist = load_datalist(_make_dataset(tmp_path))
    case = datalist.case("case-1")
    assert datalist.raters == RATERS
    assert datalist.classes == {"organ": 1, "lesion": 2}
    assert datalist.label_values == [0, 1, 2]
    assert datalist.name == "synthetic"
    assert datalist.modality == "CT"
    assert case["subject"] == "subject-1"
    assert Path(case["image"]) == tmp_path / "images" / "case-1.nii.gz"
    assert Path(case["label"]["rater-b"]) == tmp_path / "labels" / "case-1_rater-b.nii.gz"


def test_subject_defaults_to_case_id(tmp_path):
    path = _make_dataset(tmp_path)
    _edit_json(path, lambda raw: raw["training"][0].pop("subject"))
    assert load_datalist(path).case("case-1")["subject"] == "case-1"


def test_cases_returns_copies(tmp_path):
    datalist = load_datalist(_make_dataset(tmp_path))
    datalist.cases("training")[0]["image"] = "changed"
    assert datalist.cases("training")[0]["image"].endswith("case-1.nii.gz")


def test_same_case_in_two_splits_allowed(tmp_path):
    path = _make_dataset(tmp_path)
    _edit_json(path, lambda raw: raw.update({"test": list(raw["training"])}))
    datalist = load_datalist(path)
    assert sorted(datalist.splits) == ["test", "training"]
    assert datalist.cases("test")[0]["case"] == "case-1"


def test_case_id_reused_for_other_files_rejected(tmp_path):
    path = _make_dataset(tmp_path)

    def edit(raw):
        other = json.loads(json.dumps(raw["training"][0]))
        other["image"] = "images/other.nii.gz"
        raw["test"] = [other]

    _edit_json(path, edit)
    with pytest.raises(DatalistError, match="'case-1' names different files"):
        load_datalist(path)


def test_check_case_values(tmp_path):
    loaded = _load_and_check(_make_dataset(tmp_path))
    image, label = loaded["image"], loaded["label"]
    expected = _label_arrays()

    assert isinstance(image, MetaTensor)
    assert tuple(image.shape) == (1, *SHAPE)
    assert np.array_equal(image[0].numpy(), _image_array())
    assert torch.allclose(image.affine, torch.as_tensor(AFFINE, dtype=torch.float64))
    assert tuple(label.shape) == (2, *SHAPE)
    assert label.dtype == torch.uint8
    assert np.array_equal(label[0].numpy(), expected["rater-a"])
    assert np.array_equal(label[1].numpy(), expected["rater-b"])
    assert torch.allclose(label.affine, image.affine)
    assert loaded["raters"] == RATERS
    assert loaded["case"] == "case-1"
    assert loaded["subject"] == "subject-1"
    assert loaded["was_2d"] is False


def test_load_multi_rater_cased_in_dataset(tmp_path):
    datalist = load_datalist(_make_dataset(tmp_path))
    dataset = Dataset(datalist.cases("training"), transform=Compose([LoadMultiRaterCased(datalist)]))
    item = dataset[0]
    direct = check_case(datalist.cases("training")[0], datalist)
    assert torch.equal(item["label"], direct["label"])
    assert torch.equal(item["image"], direct["image"])
    assert item["raters"] == RATERS


def test_load_multi_rater_cased_from_path(tmp_path):
    path = _make_dataset(tmp_path)
    transform = LoadMultiRaterCased(path, affine_tolerance=0.5)
    assert transform.datalist.path == path
    assert transform.affine_tolerance == 0.5
    item = transform(load_datalist(path).cases("training")[0])
    assert tuple(item["label"].shape) == (2, *SHAPE)


def test_write_datalist_relative_paths(tmp_path):
    path = _make_dataset(tmp_path)
    datalist = load_datalist(path)
    outside = tmp_path.parent / "elsewhere.nii.gz"
    raw = datalist.to_dict()
    raw["training"][0]["label"]["rater-b"] = str(outside)

    written = write_datalist(raw, tmp_path / "copy.json")
    stored = json.loads(written.read_text(encoding="utf-8"))
    case = stored["training"][0]
    assert case["image"] == "images/case-1.nii.gz"
    assert case["label"]["rater-a"] == "labels/case-1_rater-a.nii.gz"
    assert case["label"]["rater-b"] == str(outside)
    assert stored["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    reloaded = load_datalist(written)
    assert reloaded.case("case-1")["image"] == datalist.case("case-1")["image"]
    assert reloaded.case("case-1")["label"]["rater-b"] == str(outside)


def test_write_datalist_leaves_no_temporary(tmp_path):
    path = _make_dataset(tmp_path)
    write_datalist(load_datalist(path), tmp_path / "copy.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json", "datalist.json", "images", "labels"]


def test_write_invalid_datalist_keeps_old_file(tmp_path):
    path = _make_dataset(tmp_path)
    before = path.read_text(encoding="utf-8")
    raw = load_datalist(path).to_dict()
    raw["raters"].append("rater-c")
    with pytest.raises(DatalistError, match="rater-c"):
        write_datalist(raw, path)
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datalist.json", "images", "labels"]


def test_datalist_without_splits_rejected(tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "a"}, "raters": ["r"]}), encoding="utf-8")
    with pytest.raises(DatalistError, match="no split"):
        load_datalist(path)


def test_allow_any_labels_keeps_values(tmp_path):
    path = _make_dataset(tmp_path)
    mask = _label_arrays()["rater-a"] * 255
    _save(mask, tmp_path / "labels" / "case-1_rater-a.nii.gz")
    datalist = load_datalist(path)
    with pytest.raises(DatalistError, match="255"):
        check_case(datalist.cases("training")[0], datalist)
    loaded = check_case(datalist.cases("training")[0], datalist, allow_any_labels=True)
    assert np.array_equal(loaded["label"][0].numpy(), mask)


def test_image_only_case(tmp_path):
    path = _make_dataset(tmp_path)
    datalist = MultiRaterDatalist(
        path=path, name="query", modality="", classes={"organ": 1}, raters=[], splits={}
    )
    case = {"case": "query", "image": str(tmp_path / "images" / "case-1.nii.gz"), "label": {}}
    loaded = check_case(case, datalist)
    assert tuple(loaded["image"].shape) == (1, *SHAPE)
    assert tuple(loaded["label"].shape) == (0, *SHAPE)
