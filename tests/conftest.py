"""Shared pytest fixtures: the LIDC data folder, a synthetic dataset and a checkpoint trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from japc.pipeline.training import train
from tests.synthetic import tiny_config, write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


def _lidc_root() -> Path:
    configured = os.environ.get("JAPC_LIDC_ROOT")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "data" / "lidc-idri-slices"


@pytest.fixture(scope="session")
def lidc_root() -> Path:
    """Folder of the LIDC-IDRI nodule slices (set JAPC_LIDC_ROOT to override); skips when absent."""
    root = _lidc_root()
    if not (root / "LIDC-IDRI-0001").is_dir():
        pytest.skip(f"LIDC-IDRI slices not found at {root}; set JAPC_LIDC_ROOT to run this test")
    return root


@pytest.fixture(scope="session")
def synthetic_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datalist of four synthetic cases (one training, three test) with three raters and two classes."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Final checkpoint of a six-episode two-stage attention run on the synthetic data."""
    output = tmp_path_factory.mktemp("run")
    return train(tiny_config(synthetic_datalist, output))
