"""Checkpoints that carry pickled code are rejected by name, and none of their code runs.

The planted object's ``__reduce__`` makes the unpickler call :func:`_touch`, which creates a
marker file. ``torch.load(weights_only=False)`` would run it, as the first test shows. Every
japc entry point must reject the file and leave the marker absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from japc.errors import CheckpointError
from japc.pipeline.bundle import checkpoint_run_config, load_checkpoint_state
from japc.pipeline.checkpoints import load_model, read_checkpoint
from japc.pipeline.datalist import load_datalist
from tests.reliability.common import assert_one_error_line, files_under, run_japc
from tests.synthetic import tiny_config


def _touch(path: str) -> str:
    Path(path).write_text("code from the checkpoint ran", encoding="utf-8")
    return "payload"


class _Payload:
    """An object whose unpickling calls :func:`_touch` on ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _touch, (str(self.marker),)


@pytest.fixture
def planted(trained_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A japc checkpoint with a payload among its values; returns (checkpoint, marker)."""
    marker = tmp_path / "code-ran"
    state = read_checkpoint(trained_checkpoint)
    state["note"] = _Payload(marker)
    path = tmp_path / "planted.pt"
    torch.save(state, path)
    return path, marker


def test_payload_runs_without_safe_loading(planted: tuple[Path, Path]) -> None:
    path, marker = planted
    assert torch.load(path, weights_only=False)["note"] == "payload"
    assert marker.exists()


def test_japc_loaders_reject_payload(planted: tuple[Path, Path]) -> None:
    path, marker = planted
    for load in (read_checkpoint, load_model, load_checkpoint_state, checkpoint_run_config):
        with pytest.raises(CheckpointError) as raised:
            load(path)
        message = str(raised.value)
        assert str(path) in message
        assert "weights_only=True" in message
    assert not marker.exists()


def test_commands_reject_payload(
    planted: tuple[Path, Path], synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = planted
    case = load_datalist(synthetic_datalist).case("case01")
    output = tmp_path / "out"
    evaluate = ["evaluate", str(path), "--datalist", str(synthetic_datalist), "--output", str(output)]
    infer = ["infer", str(path), "--support-image", case["image"], "--support-masks", case["label"]["middle"]]
    infer += ["--queries", case["image"], "--output", str(output)]
    for arguments in (evaluate, infer):
        status, lines = run_japc(arguments, capsys)
        assert status == 1
        assert_one_error_line(lines, arguments[0], [str(path), "rejected by the safe loader"])
        assert files_under(output) == []
    assert not marker.exists()


def test_resume_rejects_payload(
    planted: tuple[Path, Path], synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, marker = planted
    run = tmp_path / "run"
    latest = run / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(path.read_bytes())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(synthetic_datalist, run).to_dict()), encoding="utf-8")
    status, lines = run_japc(["train", str(config), "--resume"], capsys)
    assert status == 1
    assert_one_error_line(lines, "train", [str(latest), "rejected by the safe loader"])
    assert not marker.exists()
    assert [p.name for p in files_under(run)] == ["latest.pt"]
