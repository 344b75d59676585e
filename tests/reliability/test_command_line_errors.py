"""Bad input at every japc command: exit status 1, one error line naming file and value, no output.

Each case breaks one input and runs the command in this process. The command must return 1,
and standard error must end with exactly one ``japc <command>: error:`` line that names the
file (or case) and the offending value, with no traceback. Afterwards the output folder
contains no file: no mask, no table, no checkpoint and no temporary file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from japc.pipeline.datalist import load_datalist
from tests.reliability.common import (
    assert_one_error_line,
    copy_dataset,
    files_under,
    read_nifti,
    run_japc,
    save_nifti,
    temporary_files,
)
from tests.synthetic import RATERS, tiny_config

# --- japc infer ------------------------------------------------------------------------------


def _infer_inputs(datalist: Path) -> dict:
    """Support case01 with its three rater masks (class value 1) and query case02, from the test split."""
    cases = {case["case"]: case for case in load_datalist(datalist).cases("test")}
    support = cases["case01"]
    return {
        "support": Path(support["image"]),
        "masks": [Path(support["label"][rater]) for rater in RATERS],
        "queries": [Path(cases["case02"]["image"])],
        "extra": ["--label-value", "1"],
    }


def _query_array(inputs: dict) -> np.ndarray:
    return read_nifti(inputs["queries"][0])[0].astype(np.float32)


def _truncated_query(inputs: dict, folder: Path) -> list[str]:
    content = inputs["queries"][0].read_bytes()
    path = folder / "truncated.nii.gz"
    path.write_bytes(content[: len(content) // 2])
    inputs["queries"] = [path]
    return ["case 'query'", "truncated.nii.gz", "cannot read"]


def _text_support(inputs: dict, folder: Path) -> list[str]:
    path = folder / "notes.nii.gz"
    path.write_text("scanner notes, not an image", encoding="utf-8")
    inputs["support"] = path
    return ["case 'support'", "notes.nii.gz", "cannot read"]


def _short_mask(inputs: dict, folder: Path) -> list[str]:
    mask = read_nifti(inputs["masks"][0])[0][..., :5]
    inputs["masks"][0] = save_nifti(folder / "short.nii.gz", mask)
    return ["short.nii.gz", "(32, 32, 5)", "(32, 32, 8)"]


def _shifted_mask(inputs: dict, folder: Path) -> list[str]:
    mask, affine = read_nifti(inputs["masks"][1])
    affine = affine.copy()
    affine[0, 3] += 0.002  # twice the 1e-3 mm tolerance
    inputs["masks"][1] = save_nifti(folder / "shifted.nii.gz", mask, affine)
    return ["shifted.nii.gz", "0.002 mm", "tolerance 0.001 mm"]


def _soft_mask(inputs: dict, folder: Path) -> list[str]:
    mask = read_nifti(inputs["masks"][2])[0].astype(np.float32) * 0.5
    inputs["masks"][2] = save_nifti(folder / "soft.nii.gz", mask)
    return ["soft.nii.gz", "non-integer value(s) 0.5"]


def _absent_class(inputs: dict, folder: Path) -> list[str]:
    inputs["extra"] = ["--label-value", "3"]  # the masks hold 0, 1 (blob) and 2 (bar)
    return ["value 3", str(inputs["masks"][0])]


def _fewer_rater_ids(inputs: dict, folder: Path) -> list[str]:
    inputs["extra"] += ["--raters", "first", "second"]
    return ["3 support masks", "2 rater ids", "'first', 'second'"]


def _nan_query(inputs: dict, folder: Path) -> list[str]:
    image = _query_array(inputs)
    image[3, 4, 5] = np.nan
    inputs["queries"] = [save_nifti(folder / "nan.nii.gz", image)]
    return ["case 'query'", "nan.nii.gz", "1 NaN"]


def _infinite_support(inputs: dict, folder: Path) -> list[str]:
    image = read_nifti(inputs["support"])[0].astype(np.float32)
    image[0, 0, 0] = np.inf
    image[1, 0, 0] = -np.inf
    inputs["support"] = save_nifti(folder / "inf.nii.gz", image)
    return ["case 'support'", "inf.nii.gz", "2 infinite"]


def _2d_mask_for_3d_image(inputs: dict, folder: Path) -> list[str]:
    mask = read_nifti(inputs["masks"][0])[0][..., 4]
    inputs["masks"][0] = save_nifti(folder / "mask2d.nii.gz", mask)
    return ["mask2d.nii.gz", "is 2D", "is 3D", "(32, 32, 8)"]


def _3d_mask_for_2d_image(inputs: dict, folder: Path) -> list[str]:
    image = read_nifti(inputs["support"])[0][..., 4].astype(np.float32)
    inputs["support"] = save_nifti(folder / "image2d.nii.gz", image)
    return ["image2d.nii.gz", "is 3D", "is 2D", "(32, 32, 1)"]


def _4d_query(inputs: dict, folder: Path) -> list[str]:
    image = _query_array(inputs)
    inputs["queries"] = [save_nifti(folder / "4d.nii.gz", np.stack([image, image], axis=-1))]
    return ["4d.nii.gz", "2 channels"]


def _zero_sized_query(inputs: dict, folder: Path) -> list[str]:
    inputs["queries"] = [save_nifti(folder / "empty.nii.gz", np.zeros((32, 0, 8), np.float32))]
    return ["empty.nii.gz", "no voxels", "(32, 0, 8)"]


def _bad_query_among_good_ones(inputs: dict, folder: Path) -> list[str]:
    """A folder of three queries, the last one with a NaN: not even the good ones get masks."""
    queries = folder / "queries"
    for name in ("a_first", "b_second"):
        save_nifti(queries / f"{name}.nii.gz", _query_array(inputs))
    image = _query_array(inputs)
    image[0, 0, 0] = np.nan
    save_nifti(queries / "c_broken.nii.gz", image)
    inputs["queries"] = [queries]
    return ["c_broken.nii.gz", "1 NaN"]


INFER_CASES: list[tuple[str, Callable[[dict, Path], list[str]]]] = [
    ("truncated query", _truncated_query),
    ("support is not an image", _text_support),
    ("mask shape differs", _short_mask),
    ("mask affine beyond tolerance", _shifted_mask),
    ("mask with non-integer values", _soft_mask),
    ("class absent from every mask", _absent_class),
    ("rater ids and masks differ in number", _fewer_rater_ids),
    ("NaN in query", _nan_query),
    ("infinite intensities in support", _infinite_support),
    ("2D mask for 3D image", _2d_mask_for_3d_image),
    ("3D mask for 2D image", _3d_mask_for_2d_image),
    ("4D query", _4d_query),
    ("zero-sized query", _zero_sized_query),
    ("bad query among good ones", _bad_query_among_good_ones),
]


def _infer_arguments(checkpoint: Path, inputs: dict, output: Path) -> list[str]:
    arguments = ["infer", str(checkpoint), "--support-image", str(inputs["support"])]
    arguments += ["--support-masks", *map(str, inputs["masks"]), "--queries", *map(str, inputs["queries"])]
    return [*arguments, "--output", str(output), *inputs["extra"]]


@pytest.mark.parametrize("make_case", [case[1] for case in INFER_CASES], ids=[case[0] for case in INFER_CASES])
def test_infer_rejects_bad_input(
    make_case, trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _infer_inputs(synthetic_datalist)
    fragments = make_case(inputs, tmp_path)
    output = tmp_path / "out"
    status, lines = run_japc(_infer_arguments(trained_checkpoint, inputs, output), capsys)
    assert status == 1
    assert_one_error_line(lines, "infer", fragments)
    assert files_under(output) == []


def test_infer_accepts_affine_within_tolerance(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rounding difference of 5e-4 mm, half the tolerance, is not an error."""
    inputs = _infer_inputs(synthetic_datalist)
    mask, affine = read_nifti(inputs["masks"][1])
    affine = affine.copy()
    affine[:3, 3] += 0.0005
    inputs["masks"][1] = save_nifti(tmp_path / "rounded.nii.gz", mask, affine)
    output = tmp_path / "out"
    status, _ = run_japc(_infer_arguments(trained_checkpoint, inputs, output), capsys)
    assert status == 0
    assert len([path for path in files_under(output) if path.name.endswith(".nii.gz")]) == len(RATERS) + 1


def test_infer_output_below_a_file(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tests run as root, so an unwritable folder is made by putting it below a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    inputs = _infer_inputs(synthetic_datalist)
    status, lines = run_japc(_infer_arguments(trained_checkpoint, inputs, blocker / "out"), capsys)
    assert status == 1
    assert_one_error_line(lines, "infer", [str(blocker / "out"), "cannot be written"])
    assert blocker.read_text(encoding="utf-8") == "a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


# --- japc evaluate ---------------------------------------------------------------------------


def _case_file(datalist: Path, case_id: str, rater: str | None = None) -> Path:
    case = load_datalist(datalist).case(case_id)
    return Path(case["image"] if rater is None else case["label"][rater])


def _undeclared_label_value(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case02", "tight")
    mask, affine = read_nifti(path)
    save_nifti(path, np.where(mask == 1, 5, mask).astype(np.uint8), affine)
    return ["case 'case02'", "case02_tight.nii.gz", "value(s) 5", "0, 1, 2"]


def _nan_test_image(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case03")
    image, affine = read_nifti(path)
    image = image.astype(np.float32)
    image[10, 10, 3] = np.nan
    save_nifti(path, image, affine)
    return ["case 'case03'", "case03.nii.gz", "1 NaN"]


def _truncated_label(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case02", "loose")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 3])
    return ["case 'case02'", "case02_loose.nii.gz", "cannot read"]


def _label_affine_beyond_tolerance(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case03", "middle")
    mask, affine = read_nifti(path)
    affine = affine.copy()
    affine[2, 3] -= 0.01
    save_nifti(path, mask, affine)
    return ["case 'case03'", "case03_middle.nii.gz", "0.01 mm"]


def _4d_test_image(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case02")
    image, affine = read_nifti(path)
    save_nifti(path, np.stack([image, image, image], axis=-1).astype(np.float32), affine)
    return ["case 'case02'", "case02.nii.gz", "3 channels"]


EVALUATE_CASES = [
    ("label value not declared", _undeclared_label_value),
    ("NaN in test image", _nan_test_image),
    ("truncated label", _truncated_label),
    ("label affine beyond tolerance", _label_affine_beyond_tolerance),
    ("4D test image", _4d_test_image),
]


@pytest.mark.parametrize("break_dataset", [case[1] for case in EVALUATE_CASES], ids=[case[0] for case in EVALUATE_CASES])
def test_evaluate_rejects_bad_dataset(
    break_dataset,
    trained_checkpoint: Path,
    synthetic_datalist: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    datalist = copy_dataset(synthetic_datalist, tmp_path / "data")
    fragments = break_dataset(datalist)
    output = tmp_path / "evaluation"
    arguments = ["evaluate", str(trained_checkpoint), "--datalist", str(datalist), "--output", str(output)]
    status, lines = run_japc(arguments, capsys)
    assert status == 1
    assert_one_error_line(lines, "evaluate", fragments)
    assert files_under(output) == []


def test_evaluate_output_below_a_file(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    arguments = ["evaluate", str(trained_checkpoint), "--datalist", str(synthetic_datalist), "--output", str(blocker / "eval")]
    status, lines = run_japc(arguments, capsys)
    assert status == 1
    assert_one_error_line(lines, "evaluate", [str(blocker / "eval"), "cannot be written"])


# --- japc train ------------------------------------------------------------------------------


def _write_config(datalist: Path, output_dir: Path, path: Path) -> Path:
    path.write_text(yaml.safe_dump(tiny_config(datalist, output_dir, iterations=2).to_dict()), encoding="utf-8")
    return path


def _training_label_value(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case00", "loose")
    mask, affine = read_nifti(path)
    mask = mask.copy()
    mask[0, 0, 0] = 9
    save_nifti(path, mask, affine)
    return ["case 'case00'", "case00_loose.nii.gz", "value(s) 9"]


def _training_infinite_image(datalist: Path) -> list[str]:
    path = _case_file(datalist, "case00")
    image, affine = read_nifti(path)
    image = image.astype(np.float32)
    image[5, 5, 5] = np.inf
    save_nifti(path, image, affine)
    return ["case 'case00'", "case00.nii.gz", "1 infinite"]


def _training_image_missing(datalist: Path) -> list[str]:
    _case_file(datalist, "case00").unlink()
    return ["case 'case00'", "case00.nii.gz", "not found"]


TRAIN_CASES = [
    ("label value not declared", _training_label_value),
    ("infinite intensity", _training_infinite_image),
    ("image missing", _training_image_missing),
]


@pytest.mark.parametrize("break_dataset", [case[1] for case in TRAIN_CASES], ids=[case[0] for case in TRAIN_CASES])
def test_train_rejects_bad_dataset(
    break_dataset, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datalist = copy_dataset(synthetic_datalist, tmp_path / "data")
    fragments = break_dataset(datalist)
    run = tmp_path / "run"
    config = _write_config(datalist, run, tmp_path / "run.yaml")
    status, lines = run_japc(["train", str(config)], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", fragments)
    assert files_under(run / "checkpoints") == []
    assert not (run / "config.json").exists()
    assert not (run / "training_log.csv").exists()
    assert temporary_files(run) == []


def test_train_output_below_a_file(synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    config = _write_config(synthetic_datalist, blocker / "run", tmp_path / "run.yaml")
    status, lines = run_japc(["train", str(config)], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", [str(blocker / "run"), "cannot be written"])


# --- japc import -----------------------------------------------------------------------------


def _write_lidc_nodule(root: Path, subject: str, nodule: int, slice_numbers: list[int]) -> None:
    folder = root / subject / f"nodule-{nodule}"
    rng = np.random.default_rng(nodule)
    for sub in ("images", "mask-0", "mask-1"):
        (folder / sub).mkdir(parents=True)
    for k in slice_numbers:
        Image.fromarray(rng.integers(0, 256, (6, 7), dtype=np.uint8)).save(folder / "images" / f"slice-{k}.png")
        for rater in (0, 1):
            mask = (rng.random((6, 7)) > 0.5).astype(np.uint8) * 255
            Image.fromarray(mask).save(folder / f"mask-{rater}" / f"slice-{k}.png")


def test_import_lidc_with_missing_slice_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The second nodule skips slice 2; the first, valid nodule must not be written either."""
    source = tmp_path / "lidc"
    _write_lidc_nodule(source, "LIDC-IDRI-0001", 0, [0, 1, 2])
    _write_lidc_nodule(source, "LIDC-IDRI-0002", 0, [0, 1, 3, 4])
    output = tmp_path / "imported"
    status, lines = run_japc(["import", str(source), str(output)], capsys)
    assert status == 1
    assert_one_error_line(lines, "import", ["LIDC-IDRI-0002/nodule-0/images", "slice number(s) 2"])
    assert files_under(output) == []


def test_import_qubiq_with_truncated_segmentation_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "qubiq"
    rng = np.random.default_rng(0)
    for case in ("case01", "case02"):
        save_nifti(source / case / "image.nii.gz", rng.random((8, 9)).astype(np.float32), np.eye(4))
        for rater in ("01", "02"):
            save_nifti(source / case / f"task01_seg{rater}.nii.gz", (rng.random((8, 9)) > 0.5).astype(np.uint8), np.eye(4))
    broken = source / "case02" / "task01_seg02.nii.gz"
    broken.write_bytes(broken.read_bytes()[:40])
    output = tmp_path / "imported"
    status, lines = run_japc(["import", str(source), str(output)], capsys)
    assert status == 1
    assert_one_error_line(lines, "import", ["case02/task01_seg02.nii.gz", "Cannot read"])
    assert files_under(output) == []


def test_import_output_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "lidc"
    _write_lidc_nodule(source, "LIDC-IDRI-0001", 0, [0, 1])
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="utf-8")
    status, lines = run_japc(["import", str(source), str(blocker / "out")], capsys)
    assert status == 1
    assert_one_error_line(lines, "import", [str(blocker / "out"), "cannot be written"])


def test_datalist_names_unknown_rater_in_one_line(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A datalist whose case lists fewer raters than 'raters' stops evaluation before any table."""
    datalist = copy_dataset(synthetic_datalist, tmp_path / "data")
    content = json.loads(datalist.read_text(encoding="utf-8"))
    del content["test"][1]["label"]["loose"]
    datalist.write_text(json.dumps(content), encoding="utf-8")
    output = tmp_path / "evaluation"
    status, lines = run_japc(["evaluate", str(trained_checkpoint), "--datalist", str(datalist), "--output", str(output)], capsys)
    assert status == 1
    assert_one_error_line(lines, "evaluate", ["case02", "'loose'"])
    assert files_under(output) == []
