"""Fixtures of the MONAI Label tests: the label environment's Python."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.label.label_server import LabelEnvUnavailable, ensure_label_env


@pytest.fixture(scope="session")
def label_python() -> Path:
    """Python of the label environment (created with pip on first use); skips when it cannot be created."""
    try:
        return ensure_label_env()
    except LabelEnvUnavailable as error:
        pytest.skip(f"MONAI Label environment unavailable: {error}")
