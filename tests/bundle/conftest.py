"""A bundle trained for two stages on the synthetic data, shared by the bundle tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundle.commands import TINY_OVERRIDES, run_bundle


@pytest.fixture(scope="session")
def bundle_root(synthetic_datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundle root after stage 1 and stage 2 of train.json, three iterations each.

    Stage 2 validates after its last iteration (stage 1 skips validation to save time), so
    ``models/`` holds ``stage1.pt``, ``stage2.pt`` and the best stage-2 checkpoint ``model.pt``.
    """
    root = tmp_path_factory.mktemp("bundle")
    common = ["--bundle_root", str(root), "--datalist", str(synthetic_datalist), *TINY_OVERRIDES, "--iterations", "3"]
    run_bundle("run", "--config_file", "configs/train.json", *common, "--val_interval", "0")
    run_bundle("run", "--config_file", "configs/train.json", *common, "--stage", "2", "--val_interval", "3")
    return root
