"""Bad input to the MONAI bundle: ``python -m monai.bundle run`` exits with status 1 and one error line.

The bundle installs :func:`japc.errors.install_excepthook`, so an error caused by a japc
error prints ``japc_multirater: error: <message>`` instead of MONAI's chain of wrapped
tracebacks, and the input checks run before the engines start, so nothing is written.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from japc.pipeline.datalist import load_datalist
from tests.bundle.commands import BUNDLE_DIR, TINY_OVERRIDES
from tests.reliability.common import copy_dataset, files_under, read_nifti, save_nifti
from tests.synthetic import RATERS


def _run_bundle(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", *arguments]
    return subprocess.run(command, cwd=BUNDLE_DIR, capture_output=True, text=True, check=False, timeout=600)


def _assert_one_error_line(result: subprocess.CompletedProcess, fragments: list[str]) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("japc_multirater: error: ")
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"


def _query_folder(datalist: Path, folder: Path, broken: str | None) -> Path:
    """Two valid queries and, last in name order, one with a NaN (``nan``) or a truncated file (``truncated``)."""
    image, affine = read_nifti(load_datalist(datalist).case("case02")["image"])
    image = image.astype(np.float32)
    save_nifti(folder / "a_first.nii.gz", image, affine)
    save_nifti(folder / "b_second.nii.gz", image, affine)
    if broken == "nan":
        image[1, 2, 3] = np.nan
        save_nifti(folder / "c_broken.nii.gz", image, affine)
    elif broken == "truncated":
        content = (folder / "a_first.nii.gz").read_bytes()
        (folder / "c_broken.nii.gz").write_bytes(content[: len(content) // 2])
    return folder


def _inference_arguments(checkpoint: Path, datalist: Path, queries: Path, output: Path, masks: list[str] | None = None) -> list[str]:
    support = load_datalist(datalist).case("case01")
    masks = masks or [support["label"][rater] for rater in RATERS]
    return [
        "--config_file", "configs/inference.json", "--bundle_root", str(output.parent), "--ckpt_path", str(checkpoint),
        "--dataset_dir", str(queries), "--output_dir", str(output), "--support_image", support["image"],
        "--support_masks", repr(masks), "--raters", repr(RATERS), "--label_value", "1",
    ]  # fmt: skip


def test_train_with_undeclared_label_value(synthetic_datalist: Path, tmp_path: Path) -> None:
    datalist = copy_dataset(synthetic_datalist, tmp_path / "data")
    label = Path(load_datalist(datalist).case("case00")["label"]["tight"])
    mask, affine = read_nifti(label)
    save_nifti(label, np.where(mask == 2, 9, mask).astype(np.uint8), affine)
    root = tmp_path / "bundle"
    result = _run_bundle(
        "--config_file", "configs/train.json", "--bundle_root", str(root), "--datalist", str(datalist),
        *TINY_OVERRIDES, "--iterations", "2", "--val_interval", "0",
    )  # fmt: skip
    _assert_one_error_line(result, ["case 'case00'", "case00_tight.nii.gz", "value(s) 9"])
    assert files_under(root / "models") == []


def test_inference_with_bad_query_writes_no_mask(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    queries = _query_folder(synthetic_datalist, tmp_path / "queries", broken="nan")
    output = tmp_path / "bundle" / "masks"
    result = _run_bundle(*_inference_arguments(trained_checkpoint, synthetic_datalist, queries, output))
    _assert_one_error_line(result, ["case 'query'", "c_broken.nii.gz", "1 NaN"])
    assert files_under(output) == []


@pytest.mark.slow
def test_inference_with_truncated_query_writes_no_mask(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path
) -> None:
    queries = _query_folder(synthetic_datalist, tmp_path / "queries", broken="truncated")
    output = tmp_path / "bundle" / "masks"
    result = _run_bundle(*_inference_arguments(trained_checkpoint, synthetic_datalist, queries, output))
    _assert_one_error_line(result, ["case 'query'", "c_broken.nii.gz", "cannot read"])
    assert files_under(output) == []


@pytest.mark.slow
def test_inference_with_misaligned_support_mask(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    support = load_datalist(synthetic_datalist).case("case01")
    mask, affine = read_nifti(support["label"]["loose"])
    affine = affine.copy()
    affine[1, 3] += 0.5
    shifted = save_nifti(tmp_path / "shifted.nii.gz", mask, affine)
    masks = [support["label"]["tight"], support["label"]["middle"], str(shifted)]
    queries = _query_folder(synthetic_datalist, tmp_path / "queries", broken=None)
    output = tmp_path / "bundle" / "masks"
    result = _run_bundle(*_inference_arguments(trained_checkpoint, synthetic_datalist, queries, output, masks))
    _assert_one_error_line(result, ["case 'support'", "shifted.nii.gz", "0.5 mm"])
    assert files_under(output) == []


@pytest.mark.slow
def test_evaluate_with_nan_image(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    datalist = copy_dataset(synthetic_datalist, tmp_path / "data")
    path = Path(load_datalist(datalist).case("case03")["image"])
    image, affine = read_nifti(path)
    image = image.astype(np.float32)
    image[4, 4, 4] = np.nan
    save_nifti(path, image, affine)
    output = tmp_path / "bundle" / "eval"
    result = _run_bundle(
        "--config_file", "['configs/train.json','configs/evaluate.json']", "--bundle_root", str(output.parent),
        "--datalist", str(datalist), "--ckpt_path", str(trained_checkpoint), "--output_dir", str(output),
    )  # fmt: skip
    _assert_one_error_line(result, ["case 'case03'", "case03.nii.gz", "1 NaN"])
    assert [path for path in files_under(output) if path.suffix in (".csv", ".json")] == []


@pytest.mark.slow
def test_train_stops_on_nan_loss_without_traceback(synthetic_datalist: Path, tmp_path: Path) -> None:
    """A learning rate of 1e30 makes the weights overflow after the first step; the engine stops with one line."""
    root = tmp_path / "bundle"
    result = _run_bundle(
        "--config_file", "configs/train.json", "--bundle_root", str(root), "--datalist", str(synthetic_datalist),
        *TINY_OVERRIDES, "--japc#training#learning_rate", "1e30", "--iterations", "4", "--val_interval", "0",
    )  # fmt: skip
    _assert_one_error_line(result, ["The training loss became nan at step 1", "case case00"])
    assert files_under(root / "models") == []
