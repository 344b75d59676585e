"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
