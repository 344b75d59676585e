"""Helpers shared by the reliability tests: run the japc command, read its error, list files."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from japc.cli import main

SYNTHETIC_AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def run_japc(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run ``japc -q <arguments>`` in this process; returns the exit status and the non-empty stderr lines."""
    capsys.readouterr()
    status = main(["-q", *arguments])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return status, lines


def assert_one_error_line(lines: list[str], command: str, fragments: list[str]) -> str:
    """Check that stderr ends with exactly one ``japc <command>: error:`` line naming every fragment."""
    text = "\n".join(lines)
    assert "Traceback" not in text
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1, text
    assert lines[-1] == errors[0]
    assert errors[0].startswith(f"japc {command}: error: ")
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (hidden ones included); empty when the folder does not exist."""
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def temporary_files(folder: Path) -> list[Path]:
    """Files below ``folder`` that a writer left under a temporary name (``*.tmp*``)."""
    return [path for path in files_under(folder) if ".tmp" in path.name]


def copy_dataset(datalist: Path, destination: Path) -> Path:
    """Copy the folder of ``datalist`` (images, labels, datalist.json); returns the copied datalist."""
    shutil.copytree(datalist.parent, destination)
    return destination / datalist.name


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray = SYNTHETIC_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the data (as stored) and the affine of a NIfTI file."""
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine
