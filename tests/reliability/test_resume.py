"""Resuming ``japc train`` after SIGKILL gives the weights of an uninterrupted run, bit for bit.

The run under test is the six-episode two-stage configuration of ``tests.synthetic.tiny_config``
(stage 1: episodes 0-2, stage 2: episodes 3-5, ``latest.pt`` after steps 2, 3, 4 and 6), and
the reference is the session's ``trained_checkpoint``, trained without interruption in this
process. A small launcher runs ``japc.cli.main`` in a subprocess and blocks it at a chosen
point: before an episode, or before a checkpoint file is saved. It writes a marker file there,
and the test then kills it with SIGKILL, so every kill lands at a known step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from japc.pipeline.checkpoints import read_checkpoint
from tests.reliability.common import assert_one_error_line, files_under, run_japc, temporary_files
from tests.synthetic import tiny_config

LAUNCHER = '''
import sys
import time
from pathlib import Path

import japc.pipeline.training as training
from japc.cli import main

kind, value, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])


def block():
    marker.write_text("blocked", encoding="utf-8")
    time.sleep(600)


if kind == "episode":
    run_step = training.training_step

    def training_step(model, episode, *args, **kwargs):
        if int(episode["step"]) == int(value):
            block()
        return run_step(model, episode, *args, **kwargs)

    training.training_step = training_step
else:
    save = training.save_checkpoint

    def save_checkpoint(state, path):
        if Path(path).name == value:
            block()
        save(state, path)

    training.save_checkpoint = save_checkpoint

sys.exit(main(sys.argv[4:]))
'''

WAIT_SECONDS = 300


def _run_and_kill(launcher: Path, kill_point: tuple[str, str], arguments: list[str], folder: Path) -> None:
    """Run ``japc <arguments>`` until it blocks at ``kill_point``, then SIGKILL it."""
    marker = folder / "blocked"
    log = folder / f"log-{kill_point[0]}-{kill_point[1]}.txt"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(launcher), *kill_point, str(marker), "-q", *arguments],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while not marker.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"training never reached {kill_point}:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    marker.unlink()


def _assert_latest(checkpoints: Path, step: int, stage: int) -> None:
    latest = read_checkpoint(checkpoints / "latest.pt")
    assert (latest["step"], latest["stage"]) == (step, stage)
    assert not (checkpoints / "final.pt").exists()


def _assert_same_state(resumed: dict, reference: dict) -> None:
    assert set(resumed["model"]) == set(reference["model"])
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), f"weights {key} differ"
    momentum = [state["momentum_buffer"] for state in resumed["optimizer"]["state"].values()]
    reference_momentum = [state["momentum_buffer"] for state in reference["optimizer"]["state"].values()]
    assert len(momentum) == len(reference_momentum)
    assert all(torch.equal(a, b) for a, b in zip(momentum, reference_momentum))
    assert resumed["scheduler"] == reference["scheduler"]
    assert (resumed["step"], resumed["stage"]) == (reference["step"], reference["stage"])


def test_kills_in_both_stages_resume_to_same_weights(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(synthetic_datalist, run).to_dict()), encoding="utf-8")
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    checkpoints = run / "checkpoints"
    train, resume = ["train", str(config)], ["train", str(config), "--resume"]

    # Stage 1: killed before episode 2, after the checkpoint of step 2.
    _run_and_kill(launcher, ("episode", "2"), train, tmp_path)
    _assert_latest(checkpoints, step=2, stage=1)
    assert not (checkpoints / "stage1.pt").exists()

    # The stage boundary: stage 1 is complete in latest.pt, but the kill lands before stage1.pt is saved.
    _run_and_kill(launcher, ("save", "stage1.pt"), resume, tmp_path)
    _assert_latest(checkpoints, step=3, stage=1)
    assert not (checkpoints / "stage1.pt").exists()

    # Stage 2: killed during episode 5; episode 4 was trained after the checkpoint of step 4 and is lost.
    _run_and_kill(launcher, ("episode", "5"), resume, tmp_path)
    _assert_latest(checkpoints, step=4, stage=2)

    finished = subprocess.run(
        [sys.executable, "-m", "japc.cli", "-q", *resume], capture_output=True, text=True, check=False, timeout=WAIT_SECONDS
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    _assert_same_state(read_checkpoint(checkpoints / "final.pt"), read_checkpoint(trained_checkpoint))
    reference_stage1 = read_checkpoint(trained_checkpoint.parent / "stage1.pt")
    _assert_same_state(read_checkpoint(checkpoints / "stage1.pt"), reference_stage1)
    assert temporary_files(run) == []


def _config_file(datalist: Path, run: Path, path: Path, **model: object) -> Path:
    content = tiny_config(datalist, run).to_dict()
    content["model"].update(model)
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def test_resume_from_corrupt_checkpoint_names_it(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(trained_checkpoint.read_bytes()[:5000])
    config = _config_file(synthetic_datalist, run, tmp_path / "run.yaml")
    status, lines = run_japc(["train", str(config), "--resume"], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", [str(latest), "corrupt or truncated"])
    assert [path.name for path in files_under(run)] == ["latest.pt"]


def test_resume_without_checkpoint(synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    config = _config_file(synthetic_datalist, run, tmp_path / "run.yaml")
    status, lines = run_japc(["train", str(config), "--resume"], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", [str(run / "checkpoints" / "latest.pt"), "without --resume"])
    assert files_under(run) == []


def test_resume_with_other_network_names_checkpoint(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(trained_checkpoint.read_bytes())
    config = _config_file(synthetic_datalist, run, tmp_path / "run.yaml", feature_channels=16)
    status, lines = run_japc(["train", str(config), "--resume"], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", [str(latest), "do not fit the model"])
    assert not (run / "checkpoints" / "final.pt").exists()
