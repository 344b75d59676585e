"""ALPNet details of the method: learning-rate schedule, augmentation ranges, alignment loss."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from japc.pipeline.training import train
from japc.transforms.episodes import RandEpisodeAugmentd
from tests.networks.test_calibration import _episode, _segmenter
from tests.synthetic import tiny_config


def test_learning_rate_decays_by_gamma_every_step_size(synthetic_datalist: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_datalist, tmp_path, calibration="none", iterations=8)
    config.training.lr_step = 3
    config.training.lr_gamma = 0.95
    config.training.log_every = 1
    train(config)
    with (tmp_path / "training_log.csv").open() as stream:
        rates = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(stream)}
    for step in range(1, 9):
        assert rates[step] == pytest.approx(1e-3 * 0.95 ** (step // 3), rel=1e-6)


def test_stage_two_restarts_the_schedule(synthetic_datalist: Path, tmp_path: Path) -> None:
    config = tiny_config(synthetic_datalist, tmp_path, calibration="attention", iterations=8)
    config.training.lr_step = 3
    config.training.log_every = 1
    train(config)
    with (tmp_path / "training_log.csv").open() as stream:
        rates = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(stream)}
    assert rates[3] == pytest.approx(0.95e-3)  # stage 1: steps 1-4
    assert rates[5] == pytest.approx(1e-3)  # stage 2 starts with a fresh optimiser and schedule
    assert rates[7] == pytest.approx(0.95e-3)


def test_augmentation_draws_within_published_ranges() -> None:
    transform = RandEpisodeAugmentd()
    transform.set_random_state(seed=0)
    drawn = []
    for _ in range(300):
        transform.randomize((64, 64))
        drawn.extend([transform.support_params, transform.query_params])
    angles = np.array([p.angle for p in drawn])
    shifts = np.array([p.shift for p in drawn])
    shears = np.array([p.shear for p in drawn])
    scales = np.array([p.scale for p in drawn])
    gammas = np.array([p.gamma for p in drawn])
    assert angles.min() >= -5.0 and angles.max() <= 5.0
    assert shifts.min() >= -5.0 and shifts.max() <= 5.0
    assert shears.min() >= -5.0 and shears.max() <= 5.0
    assert scales.min() >= 0.9 and scales.max() <= 1.2
    assert gammas.min() >= 0.5 and gammas.max() <= 1.5
    # the ranges are used, not only a corner of them
    assert angles.min() < -4.0 and angles.max() > 4.0
    assert scales.min() < 0.92 and scales.max() > 1.18
    assert gammas.min() < 0.55 and gammas.max() > 1.45
    assert all(p.displacement is not None and p.displacement.shape == (2, 64, 64) for p in drawn[:4])


def test_alignment_loss_uses_calibrated_prototypes() -> None:
    support, masks, query = _episode(num_raters=3)
    model = _segmenter("attention").train()
    nn.init.normal_(model.calibration.value.weight, std=0.5)
    output = model.run_episode(support, masks, query[:1])
    calibrated = model.alignment_loss(output, masks)
    model.calibration_enabled = False
    uncalibrated = model.alignment_loss(output, masks)
    assert torch.isfinite(calibrated) and torch.isfinite(uncalibrated)
    assert abs(float(calibrated) - float(uncalibrated)) > 1e-4


def test_train_and_test_windows_differ() -> None:
    model = _segmenter("none")
    model.train()
    assert model.head.window == 4
    model.eval()
    assert model.head.window == 2
