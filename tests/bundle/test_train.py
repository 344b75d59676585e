"""Bundle training: two stages through train.json, japc's checkpoint layout, the stage plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from japc.errors import CheckpointError, ConfigError
from japc.pipeline.bundle import bundle_run_config, training_stage
from japc.pipeline.checkpoints import load_model, read_checkpoint

CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "scheduler",
    "step",
    "stage",
    "calibration_enabled",
    "config",
    "torch_rng",
    "format_version",
}


def _sections(datalist: Path) -> dict:
    return {
        "data": {"datalist": str(datalist)},
        "preprocessing": {"spatial_size": [32, 32], "superpixel_min_size": 20},
        "model": {"feature_channels": 32, "attention_dim": 8},
        "training": {"lr_step": 4, "seed": 7},
    }


def test_stages_write_japc_checkpoints(bundle_root: Path) -> None:
    models = bundle_root / "models"
    stage1 = read_checkpoint(models / "stage1.pt")
    stage2 = read_checkpoint(models / "stage2.pt")
    assert set(stage1) == CHECKPOINT_KEYS
    assert set(stage2) == CHECKPOINT_KEYS
    assert (stage1["stage"], stage1["step"], stage1["calibration_enabled"]) == (1, 3, False)
    assert (stage2["stage"], stage2["step"], stage2["calibration_enabled"]) == (2, 6, True)
    assert stage2["config"]["training"]["stage1_iterations"] == 3
    assert stage2["config"]["training"]["iterations"] == 6
    assert stage2["config"]["model"]["feature_channels"] == 32
    # Stage 2 trains the calibration module, which stage 1 leaves at its initial values.
    calibration = [key for key in stage2["model"] if key.startswith("calibration.")]
    assert calibration
    assert any(not torch.equal(stage1["model"][key], stage2["model"][key]) for key in calibration)


def test_stage2_optimiser_is_fresh(bundle_root: Path) -> None:
    """Stage 2 builds a new optimiser over more parameters (calibration) and a new scheduler."""
    stage1 = read_checkpoint(bundle_root / "models" / "stage1.pt")
    stage2 = read_checkpoint(bundle_root / "models" / "stage2.pt")
    count1 = len(stage1["optimizer"]["param_groups"][0]["params"])
    count2 = len(stage2["optimizer"]["param_groups"][0]["params"])
    calibration_tensors = sum(1 for key in stage2["model"] if key.startswith("calibration."))
    assert count2 == count1 + calibration_tensors
    assert stage2["scheduler"]["last_epoch"] == 3


def test_bundle_weights_equal_japc_train(bundle_root: Path, trained_checkpoint: Path) -> None:
    """Three bundle iterations per stage give the weights of japc train with stage1_iterations=3 of 6."""
    bundle = read_checkpoint(bundle_root / "models" / "stage2.pt")["model"]
    japc = read_checkpoint(trained_checkpoint)["model"]
    assert set(bundle) == set(japc)
    for key in japc:
        torch.testing.assert_close(bundle[key], japc[key], rtol=0, atol=1e-6, msg=f"tensor {key} differs")


def test_best_model_and_logs(bundle_root: Path) -> None:
    """ValidationHandler scored the final step; the best checkpoint loads as a japc model."""
    best = read_checkpoint(bundle_root / "models" / "model.pt")
    assert best["step"] == 6
    model, config, _ = load_model(bundle_root / "models" / "model.pt")
    assert config.preprocessing.spatial_size == [32, 32]
    logits = model(torch.rand(1, 1, 32, 32), (torch.rand(1, 2, 32, 32) > 0.5).float(), torch.rand(3, 1, 32, 32))
    assert logits.shape == (3, 2, 2, 32, 32)
    assert list((bundle_root / "eval" / "tensorboard").glob("events.out.tfevents.*"))


def test_stage2_without_stage1_checkpoint(synthetic_datalist: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Run stage 1 first"):
        bundle_run_config(_sections(synthetic_datalist), 2, 3, tmp_path, stage1_checkpoint=tmp_path / "stage1.pt")


def test_stage2_rejects_other_network(bundle_root: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    sections = _sections(synthetic_datalist)
    sections["model"]["feature_channels"] = 64
    with pytest.raises(ConfigError, match="model.feature_channels: 64 here, 32 in stage 1"):
        bundle_run_config(sections, 2, 3, tmp_path, stage1_checkpoint=bundle_root / "models" / "stage1.pt")


def test_stage2_rejects_stage2_checkpoint(bundle_root: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="stage-2 weights"):
        bundle_run_config(
            _sections(synthetic_datalist), 2, 3, tmp_path, stage1_checkpoint=bundle_root / "models" / "stage2.pt"
        )


def test_stage_budget_maps_to_steps(bundle_root: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    first = bundle_run_config(_sections(synthetic_datalist), 1, 5, tmp_path, num_processes=2)
    assert (first.training.iterations, first.stage1_stop) == (10, 10)
    assert training_stage(first, 1).stop == 10
    second = bundle_run_config(
        _sections(synthetic_datalist), 2, 4, tmp_path, stage1_checkpoint=bundle_root / "models" / "stage1.pt"
    )
    stage = training_stage(second, 2)
    assert (stage.start, stage.stop, stage.num_raters, stage.calibration) == (3, 7, 3, True)


def test_base_network_has_no_stage2(synthetic_datalist: Path, tmp_path: Path) -> None:
    sections = _sections(synthetic_datalist)
    sections["model"]["calibration"] = "none"
    with pytest.raises(ConfigError, match="calibration is 'none'"):
        bundle_run_config(sections, 2, 3, tmp_path)
    config = bundle_run_config(sections, 1, 3, tmp_path)
    assert training_stage(config, 1).stop == 3
