"""Two-stage episodic training: stages, checkpoints, determinism and episode streams."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from japc.errors import CheckpointError, DatalistError
from japc.pipeline.checkpoints import load_model, read_checkpoint
from japc.pipeline.training import EpisodeDataset, EpisodicTrainer, plan_stages, train
from tests.synthetic import tiny_config


def test_stage_plan_of_attention_and_base(tmp_path: Path) -> None:
    attention = plan_stages(tiny_config(tmp_path / "d.json", tmp_path, "attention", iterations=10))
    assert [(s.index, s.start, s.stop, s.num_raters, s.calibration) for s in attention] == [
        (1, 0, 5, 1, False),
        (2, 5, 10, 3, True),
    ]
    base = plan_stages(tiny_config(tmp_path / "d.json", tmp_path, "none", iterations=10))
    assert [(s.index, s.start, s.stop, s.num_raters, s.calibration) for s in base] == [(1, 0, 10, 1, False)]


def test_checkpoints_hold_state_of_each_stage(trained_checkpoint: Path) -> None:
    folder = trained_checkpoint.parent
    final = read_checkpoint(trained_checkpoint)
    stage1 = read_checkpoint(folder / "stage1.pt")
    assert final["step"] == 6
    assert final["stage"] == 2
    assert stage1["step"] == 3
    assert stage1["stage"] == 1
    for key in ("optimizer", "scheduler", "torch_rng", "config"):
        assert key in final
    # calibration starts as the identity in stage 2 and is trained there, never in stage 1
    assert torch.count_nonzero(stage1["model"]["calibration.value.weight"]) == 0
    assert torch.count_nonzero(final["model"]["calibration.value.weight"]) > 0
    assert not torch.equal(stage1["model"]["encoder.projection.weight"], final["model"]["encoder.projection.weight"])


def test_training_log_lists_losses(trained_checkpoint: Path) -> None:
    with (trained_checkpoint.parents[1] / "training_log.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6]
    assert [int(r["stage"]) for r in rows] == [1, 1, 2, 2]
    for row in rows:
        assert float(row["loss"]) == pytest.approx(
            float(row["segmentation"]) + float(row["alignment"]) + float(row["calibration"]), abs=1e-5
        )
    assert all(float(r["calibration"]) == 0.0 for r in rows if r["stage"] == "1")


def test_same_seed_gives_same_weights(synthetic_datalist: Path, tmp_path: Path) -> None:
    first = read_checkpoint(train(tiny_config(synthetic_datalist, tmp_path / "a", iterations=4)))
    second = read_checkpoint(train(tiny_config(synthetic_datalist, tmp_path / "b", iterations=4)))
    for key, value in first["model"].items():
        assert torch.equal(value, second["model"][key]), key


def test_episodes_depend_only_on_seed_and_step(synthetic_datalist: Path, tmp_path: Path) -> None:
    trainer = EpisodicTrainer(tiny_config(synthetic_datalist, tmp_path))
    volumes = trainer.load_volumes()
    dataset = EpisodeDataset(volumes, num_raters=3, pseudo_styles=True, seed=7)
    again = EpisodeDataset(volumes, num_raters=3, pseudo_styles=True, seed=7)
    assert torch.equal(dataset[5]["query_image"], again[5]["query_image"])
    assert torch.equal(dataset[5]["support_masks"], again[5]["support_masks"])
    assert not torch.equal(dataset[5]["query_image"], dataset[6]["query_image"])
    other_seed = EpisodeDataset(volumes, num_raters=3, pseudo_styles=True, seed=8)
    assert not torch.equal(dataset[5]["query_image"], other_seed[5]["query_image"])
    assert dataset[5]["support_masks"].shape == (3, 32, 32)


def test_load_model_restores_weights(trained_checkpoint: Path) -> None:
    model, config, state = load_model(trained_checkpoint)
    assert not model.training
    assert model.calibration_enabled
    assert config.model.calibration == "attention"
    assert torch.equal(model.state_dict()["encoder.projection.weight"], state["model"]["encoder.projection.weight"])


def test_truncated_checkpoint_is_reported(trained_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(trained_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.pt"):
        read_checkpoint(broken)


def test_unknown_test_class_is_rejected(synthetic_datalist: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_datalist, tmp_path)
    config.data.test_classes = ["liver"]
    with pytest.raises(DatalistError, match="liver"):
        EpisodicTrainer(config).load_volumes()


def test_setting_two_never_draws_test_class_slices(synthetic_datalist: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_datalist, tmp_path)
    config.data.test_classes = ["blob"]
    config.data.setting = 2
    volumes = EpisodicTrainer(config).load_volumes()
    forbidden = set()
    for volume in volumes:
        blob_slices = (volume["label"] == 1).flatten(0, -2).any(dim=0)
        forbidden |= {(volume["case"], int(z)) for z in torch.nonzero(blob_slices).flatten()}
        assert volume["excluded_slices"] == int(blob_slices.sum())
    assert forbidden
    dataset = EpisodeDataset(volumes, num_raters=1, pseudo_styles=False, seed=0)
    drawn = {(dataset[step]["case"], dataset[step]["slice_index"]) for step in range(200)}
    assert not drawn & forbidden
    assert len(drawn) >= 2


def test_setting_one_draws_test_class_slices(synthetic_datalist: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_datalist, tmp_path)
    config.data.test_classes = ["blob"]
    volumes = EpisodicTrainer(config).load_volumes()
    blob_slices = {
        (v["case"], int(z)) for v in volumes for z in torch.nonzero((v["label"] == 1).flatten(0, -2).any(dim=0)).flatten()
    }
    dataset = EpisodeDataset(volumes, num_raters=1, pseudo_styles=False, seed=0)
    drawn = {(dataset[step]["case"], dataset[step]["slice_index"]) for step in range(200)}
    assert drawn & blob_slices


def test_episodes_never_have_empty_masks(synthetic_datalist: Path, tmp_path: Path) -> None:
    """Redrawn episodes: no rater mask of a support or query copy is empty or full."""
    config = tiny_config(synthetic_datalist, tmp_path)
    volumes = EpisodicTrainer(config).load_volumes()
    dataset = EpisodeDataset(volumes, num_raters=3, pseudo_styles=True, seed=1)
    for step in range(150):
        episode = dataset[step]
        for key in ("support_masks", "query_masks"):
            foreground = episode[key].flatten(1).sum(dim=1)
            assert (foreground > 0).all(), (step, key)
            assert (foreground < episode[key][0].numel()).all(), (step, key)
