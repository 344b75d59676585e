"""Resuming a bundle training stage after SIGKILL gives the weights of an uninterrupted run.

Both runs train stage 1 of train.json for six iterations and save ``stage1_latest.pt`` every two.
A small launcher runs ``python -m monai.bundle`` in a subprocess and blocks it before the episode
of step 5, after the save at step 4, by writing a marker file and sleeping. The test then kills
it with SIGKILL and resumes with ``--resume True``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from japc.pipeline.checkpoints import read_checkpoint
from tests.bundle.commands import BUNDLE_DIR, TINY_OVERRIDES, run_bundle

LAUNCHER = '''
import runpy
import sys
import time
from pathlib import Path

import japc.pipeline.bundle_training as bundle_training

block_step, marker = int(sys.argv[1]), Path(sys.argv[2])
run_step = bundle_training.training_step


def training_step(model, episode, *args, **kwargs):
    if int(episode["step"]) == block_step:
        marker.write_text("blocked", encoding="utf-8")
        time.sleep(600)
    return run_step(model, episode, *args, **kwargs)


bundle_training.training_step = training_step
sys.argv = ["monai.bundle", *sys.argv[3:]]
runpy.run_module("monai.bundle", run_name="__main__")
'''

WAIT_SECONDS = 300


def _arguments(root: Path, datalist: Path) -> list[str]:
    return [
        "run",
        "--config_file",
        "configs/train.json",
        "--bundle_root",
        str(root),
        "--datalist",
        str(datalist),
        *TINY_OVERRIDES,
        "--iterations",
        "6",
        "--save_every",
        "2",
        "--val_interval",
        "0",
    ]


def _run_until_blocked(launcher: Path, step: int, arguments: list[str], folder: Path) -> None:
    """Run the bundle until it blocks before the episode of ``step``, then SIGKILL it."""
    marker = folder / "blocked"
    with (folder / "killed-run.log").open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(launcher), str(step), str(marker), *arguments],
            cwd=BUNDLE_DIR,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the bundle exited with {process.returncode} before step {step}")
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the bundle did not reach step {step} within {WAIT_SECONDS} s")
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


def test_resume_after_kill_equals_uninterrupted(synthetic_datalist: Path, tmp_path: Path) -> None:
    reference_root = tmp_path / "reference"
    run_bundle(*_arguments(reference_root, synthetic_datalist))
    reference = read_checkpoint(reference_root / "models" / "stage1.pt")

    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    root = tmp_path / "killed"
    root.mkdir()
    _run_until_blocked(launcher, 5, _arguments(root, synthetic_datalist), tmp_path)
    models = root / "models"
    assert not (models / "stage1.pt").exists()
    assert read_checkpoint(models / "stage1_latest.pt")["step"] == 4

    run_bundle(*_arguments(root, synthetic_datalist), "--resume", "True")
    resumed = read_checkpoint(models / "stage1.pt")
    assert resumed["step"] == reference["step"] == 6
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["scheduler"] == reference["scheduler"]
    momentum = [state["momentum_buffer"] for state in resumed["optimizer"]["state"].values()]
    expected = [state["momentum_buffer"] for state in reference["optimizer"]["state"].values()]
    assert len(expected) > 0
    assert len(momentum) == len(expected)
    for index, (got, want) in enumerate(zip(momentum, expected)):
        assert torch.equal(got, want), f"momentum buffer {index}"


def test_resume_without_checkpoint_names_path(synthetic_datalist: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "monai.bundle", *_arguments(tmp_path, synthetic_datalist), "--resume", "True"]
    result = subprocess.run(command, cwd=BUNDLE_DIR, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    expected = str(tmp_path / "models" / "stage1_latest.pt")
    assert f"Cannot resume: no checkpoint at {expected}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "stage1.pt").exists()
