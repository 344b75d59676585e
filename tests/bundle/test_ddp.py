"""Distributed training: distinct episode steps per process, and torchrun with gloo averaging gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from japc.errors import ConfigError
from japc.pipeline.bundle import TrainingStageSetup, bundle_run_config, stage_parameters
from japc.pipeline.checkpoints import read_checkpoint
from japc.pipeline.ddp import EpisodeStepSampler
from japc.pipeline.training import training_step
from tests.bundle.commands import TINY_OVERRIDES, run_command


def test_sampler_gives_ranks_distinct_steps() -> None:
    draws = [list(EpisodeStepSampler(start=5, iterations=4, num_replicas=3, rank=r)) for r in range(3)]
    assert draws[1] == [6, 9, 12, 15]
    assert all(len(d) == 4 for d in draws)
    assert sorted(step for d in draws for step in d) == list(range(5, 17))


def test_single_process_draws_consecutive_steps() -> None:
    sampler = EpisodeStepSampler(start=3, iterations=4, num_replicas=1, rank=0)
    assert list(sampler) == [3, 4, 5, 6]
    assert len(sampler) == 4


def test_sampler_rejects_rank_outside_group() -> None:
    with pytest.raises(ConfigError, match="outside the 2 processes"):
        EpisodeStepSampler(start=0, iterations=1, num_replicas=2, rank=2)


def _expected_parameters(datalist: Path, output: Path, episodes: list[int]) -> dict[str, torch.Tensor]:
    """Parameters after one SGD step on the mean loss of ``episodes``, computed in this process."""
    sections = {
        "data": {"datalist": str(datalist)},
        "preprocessing": {"spatial_size": [32, 32], "superpixel_min_size": 20},
        "model": {"feature_channels": 32, "attention_dim": 8},
        "training": {"lr_step": 4, "seed": 7},
    }
    config = bundle_run_config(sections, 1, 1, output, num_processes=2, device="cpu")
    setup = TrainingStageSetup(config, 1)
    dataset = setup.dataset()
    network = setup.network.train()
    training = config.training
    optimizer = torch.optim.SGD(
        stage_parameters(network, False),
        lr=training.learning_rate,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
    )
    losses = [training_step(network, dataset[step], tuple(training.class_weights)).total for step in episodes]
    (sum(losses) / len(losses)).backward()
    optimizer.step()
    return {name: parameter.detach().clone() for name, parameter in network.named_parameters()}


def test_torchrun_gloo_averages_two_episodes(synthetic_datalist: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    run_command(
        [
            *launcher,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "['configs/train.json','configs/multi_gpu_train.json']",
            "--device_type",
            "cpu",
            "--backend",
            "gloo",
            "--bundle_root",
            str(tmp_path / "bundle"),
            "--datalist",
            str(synthetic_datalist),
            *TINY_OVERRIDES,
            "--iterations",
            "1",
            "--val_interval",
            "0",
        ]
    )
    checkpoint = read_checkpoint(tmp_path / "bundle" / "models" / "stage1.pt")
    assert checkpoint["step"] == 2
    assert checkpoint["config"]["training"]["iterations"] == 2
    assert not (tmp_path / "bundle" / "models" / "model.pt").exists()

    # Rank 0 drew step 0 and rank 1 step 1; DistributedDataParallel averaged their gradients.
    both = _expected_parameters(synthetic_datalist, tmp_path / "expected", [0, 1])
    first_only = _expected_parameters(synthetic_datalist, tmp_path / "expected", [0])
    trained = checkpoint["model"]
    for name, value in both.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=f"parameter {name} differs")
    largest = max(float((trained[name] - value).abs().max()) for name, value in first_only.items())
    assert largest > 1e-5
