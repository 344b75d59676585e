"""Checkpoints in the bundle: MONAI's CheckpointLoader reads japc checkpoints and bare state dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from japc.errors import CheckpointError
from japc.pipeline.bundle import EpisodeLoss, build_network, checkpoint_run_config
from japc.pipeline.checkpoints import read_checkpoint


def _load_with_monai(path: Path, network: torch.nn.Module) -> None:
    engine = Engine(lambda engine, batch: None)
    CheckpointLoader(load_path=str(path), load_dict={"model": network}, map_location=torch.device("cpu")).attach(engine)
    engine.run([0])


def _assert_weights_equal(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = network.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_loader_reads_japc_checkpoint(trained_checkpoint: Path) -> None:
    config = checkpoint_run_config(trained_checkpoint)
    assert config.model.feature_channels == 32
    network = build_network(config, trained_checkpoint)
    _load_with_monai(trained_checkpoint, network)
    state = read_checkpoint(trained_checkpoint)
    _assert_weights_equal(network, state["model"])
    assert network.calibration_enabled is True
    assert not network.training


def test_loader_reads_bare_state_dict(trained_checkpoint: Path, tmp_path: Path) -> None:
    state = read_checkpoint(trained_checkpoint)
    bare = tmp_path / "model.pt"
    torch.save(state["model"], bare)
    sections = {"model": dict(state["config"]["model"]), "preprocessing": {"spatial_size": [32, 32]}}
    config = checkpoint_run_config(bare, sections, tmp_path)
    assert config.preprocessing.spatial_size == [32, 32]
    network = build_network(config, bare)
    _load_with_monai(bare, network)
    _assert_weights_equal(network, state["model"])


def test_bare_state_dict_needs_sections(trained_checkpoint: Path, tmp_path: Path) -> None:
    bare = tmp_path / "model.pt"
    torch.save(read_checkpoint(trained_checkpoint)["model"], bare)
    with pytest.raises(CheckpointError, match="bare state dict"):
        checkpoint_run_config(bare)


def test_network_follows_calibration_flag(trained_checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint saved before stage 2 predicts without calibration, as japc's load_model does."""
    state = read_checkpoint(trained_checkpoint)
    stage1 = tmp_path / "stage1.pt"
    torch.save(dict(state, calibration_enabled=False, stage=1), stage1)
    network = build_network(checkpoint_run_config(stage1), stage1)
    assert network.calibration_enabled is False


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="model.pt"):
        checkpoint_run_config(tmp_path / "model.pt")


def test_amp_is_ignored_on_cpu(trained_checkpoint: Path) -> None:
    """bfloat16 autocast only acts on CUDA, so amp=True gives the float32 losses on the CPU."""
    network = build_network(checkpoint_run_config(trained_checkpoint), trained_checkpoint).train()
    network.load_state_dict(read_checkpoint(trained_checkpoint)["model"])
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 32, 32)
    masks[:, 8:20, 10:22] = 1
    episode = {
        "support_image": torch.rand(1, 32, 32, generator=generator),
        "support_masks": masks,
        "query_image": torch.rand(1, 32, 32, generator=generator),
        "query_masks": masks,
    }
    plain = EpisodeLoss(network, [0.05, 1.0], amp=False)(episode)
    mixed = EpisodeLoss(network, [0.05, 1.0], amp=True)(episode)
    for key in ("segmentation", "alignment", "calibration"):
        assert mixed[key].dtype == torch.float32
        assert torch.equal(plain[key], mixed[key]), key
