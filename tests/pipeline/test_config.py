"""Run configuration files: defaults, overrides and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from japc.errors import ConfigError
from japc.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_lidc_recipe_loads_with_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(REPO / "configs" / "lidc.yaml", ["training.iterations=10", "model.calibration=none"])
    assert config.training.iterations == 10
    assert config.model.calibration == "none"
    assert config.model.encoder == "resnet18"
    assert config.preprocessing.spatial_size == [128, 128]
    assert config.data.datalist == str(tmp_path / "data" / "lidc" / "datalist.json")
    assert config.output_dir == str(tmp_path / "runs" / "lidc-attention")


def test_defaults_fill_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  calibration: gate\n")
    config = load_config(path)
    assert config.model.calibration == "gate"
    assert config.training.learning_rate == pytest.approx(1e-3)
    assert config.training.class_weights == [0.05, 1.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("modle:\n  encoder: resnet18\n", "Unknown configuration section"),
        ("model:\n  encodr: resnet18\n", "Unknown key(s) ['encodr'] in section 'model'"),
        ("training:\n  iterations: 0\n", "training.iterations must be at least 1"),
        ("training:\n  iterations: 10\n  stage1_iterations: 20\n", "stage1_iterations must lie in [0, iterations=10]"),
        ("preprocessing:\n  spatial_size: [64]\n", "spatial_size must be two sizes"),
        ("- a\n- b\n", "must contain a mapping"),
        ("model: [unclosed\n", "Cannot read configuration file"),
    ],
)
def test_invalid_configuration_is_reported(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert "bad.yaml" in str(error.value)


def test_malformed_override_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["training.iterations"])


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("name", "iterations", "stage2_start", "raters", "encoder"),
    [
        ("curvas.yaml", 50000, 25000, 3, "deeplabv3_resnet101"),
        ("curvas-cpu.yaml", 2000, 1000, 3, "resnet18"),
        ("qubiq-brain-growth.yaml", 10000, 5000, 7, "deeplabv3_resnet101"),
        ("qubiq-brain-growth-cpu.yaml", 2000, 1000, 7, "resnet18"),
    ],
)
def test_recipes_carry_published_budgets(name: str, iterations: int, stage2_start: int, raters: int, encoder: str) -> None:
    config = load_config(REPO / "configs" / name)
    assert config.training.iterations == iterations
    assert config.stage1_stop == stage2_start
    assert config.training.num_raters == raters
    assert config.model.encoder == encoder


def test_curvas_recipe_preprocessing() -> None:
    config = load_config(REPO / "configs" / "curvas.yaml")
    assert config.preprocessing.intensity["window"] == [-125, 275]
    assert config.preprocessing.border_crop == 32
    assert config.preprocessing.slice_spacing == 3.0
    assert config.preprocessing.spatial_size == [256, 256]
    assert config.preprocessing.dataset_zscore
    assert config.data.test_classes == ["kidney", "pancreas", "liver"]


def test_setting_two_override_parses_class_list() -> None:
    config = load_config(REPO / "configs" / "curvas.yaml", ["data.setting=2", "data.test_classes=[pancreas, liver]"])
    assert config.data.setting == 2
    assert config.data.test_classes == ["pancreas", "liver"]


def test_unknown_override_key_names_the_override(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("{}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, ["training.iteratons=5"])
    assert "--set 'training.iteratons=5'" in str(error.value)
    assert "iterations" in str(error.value)
