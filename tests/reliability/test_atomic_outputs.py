"""Writers that fail half-way leave the previous file intact and no temporary file behind.

Each test writes a file, then makes the underlying writer (``nibabel.save``, ``torch.save``,
``DataFrame.to_csv``) write a few bytes and raise, as a full disk does, and checks the bytes of
the previous file and the folder's listing.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import CheckpointSaver

from japc.pipeline.bundle import AtomicCheckpointSaver, SaveRaterMasksd
from japc.pipeline.checkpoints import save_checkpoint
from japc.pipeline.datalist import load_datalist
from japc.pipeline.files import write_nifti_atomic
from tests.reliability.common import assert_one_error_line, files_under, run_japc, temporary_files
from tests.synthetic import RATERS

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_CONFIGS = REPO_ROOT / "bundles" / "japc_multirater" / "configs"


def _disk_full(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fail_from_call(first_failing_call: int, write_partial, original):
    """Wrap a writer so that call ``first_failing_call`` (counted from 1) and every later call
    write a few bytes and raise, as on a disk that has become full."""
    calls = {"count": 0}

    def writer(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] >= first_failing_call:
            write_partial(*args)
            raise _disk_full(args[1] if len(args) > 1 else "<stream>")
        return original(*args, **kwargs)

    return writer


def _partial_nifti(image: object, filename: object) -> None:
    Path(filename).write_bytes(b"\x1f\x8b\x08\x00partial")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in files_under(folder)}


def test_nifti_writer_failure_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mask.nii.gz"
    write_nifti_atomic(np.ones((4, 5, 2), np.uint8), np.eye(4), path)
    before = path.read_bytes()
    monkeypatch.setattr(nibabel, "save", _fail_from_call(1, _partial_nifti, nibabel.save))
    with pytest.raises(OSError, match="No space left"):
        write_nifti_atomic(np.zeros((4, 5, 2), np.uint8), np.eye(4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_infer_failing_mid_query_keeps_previous_masks(
    trained_checkpoint: Path,
    synthetic_datalist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second run of japc infer fails on its second mask file: the first run's files stay complete."""
    case = load_datalist(synthetic_datalist).case("case01")
    output = tmp_path / "out"
    arguments = ["infer", str(trained_checkpoint), "--support-image", case["image"], "--support-masks"]
    arguments += [case["label"][rater] for rater in RATERS]
    arguments += ["--raters", *RATERS, "--queries", case["image"], "--output", str(output), "--label-value", "1"]
    assert run_japc(arguments, capsys)[0] == 0
    before = _snapshot(output)
    assert len(before) == len(RATERS) + 1

    monkeypatch.setattr(nibabel, "save", _fail_from_call(2, _partial_nifti, nibabel.save))
    status, lines = run_japc([*arguments, "--threshold", "0.01"], capsys)
    assert status == 1
    assert_one_error_line(lines, "infer", ["No space left on device", str(output / "case01")])
    after = _snapshot(output)
    assert set(after) == set(before)
    second_mask = f"case01/case01_{RATERS[1]}.nii.gz"
    assert after[second_mask] == before[second_mask]
    for name in after:
        data = np.asarray(nibabel.load(output / name).dataobj)  # every file is a complete NIfTI
        assert data.shape == (32, 32, 8)
    assert temporary_files(output) == []


def test_checkpoint_failure_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "latest.pt"
    save_checkpoint({"model": {"weight": torch.ones(3)}, "step": 4}, path)
    before = path.read_bytes()

    def partial_checkpoint(state: object, stream) -> None:
        stream.write(b"PK\x03\x04partial")

    monkeypatch.setattr(torch, "save", _fail_from_call(1, partial_checkpoint, torch.save))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"model": {"weight": torch.zeros(3)}, "step": 6}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]


def test_evaluation_table_failure_keeps_previous_tables(
    trained_checkpoint: Path,
    synthetic_datalist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    output = tmp_path / "evaluation"
    arguments = ["evaluate", str(trained_checkpoint), "--datalist", str(synthetic_datalist), "--output", str(output)]
    assert run_japc(arguments, capsys)[0] == 0
    before = _snapshot(output)
    assert set(before) == {"dice_per_case.csv", "summary.json"}

    def partial_table(frame: pd.DataFrame, path: object, **kwargs: object) -> None:
        Path(path).write_text("support,query,cla", encoding="utf-8")

    monkeypatch.setattr(pd.DataFrame, "to_csv", _fail_from_call(1, partial_table, pd.DataFrame.to_csv))
    status, lines = run_japc([*arguments, "--no-oracle"], capsys)
    assert status == 1
    assert_one_error_line(lines, "evaluate", ["No space left on device", str(output)])
    assert _snapshot(output) == before
    assert json.loads(before["summary.json"])["protocol"]["oracle"] is True


def _probabilities(folder: Path, value: float) -> MetaTensor:
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    probabilities = torch.full((len(RATERS), 6, 5, 4), value)
    return MetaTensor(probabilities, affine=affine, meta={"filename_or_obj": str(folder / "query.nii.gz")})


def test_bundle_mask_writer_failure_keeps_previous_masks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "masks"
    save = SaveRaterMasksd(keys="pred", raters=RATERS, output_dir=output)
    save({"pred": _probabilities(tmp_path, 0.9)})
    before = _snapshot(output)
    assert sorted(before) == sorted(
        [f"query/query_{rater}.nii.gz" for rater in RATERS] + ["query/query_mean_probability.nii.gz"]
    )

    monkeypatch.setattr(nibabel, "save", _fail_from_call(2, _partial_nifti, nibabel.save))
    # MONAI's SaveImage reports a writer's error as a RuntimeError that quotes it.
    with pytest.raises(RuntimeError, match="No space left"):
        save({"pred": _probabilities(tmp_path, 0.1)})
    after = _snapshot(output)
    assert set(after) == set(before)
    assert after[f"query/query_{RATERS[1]}.nii.gz"] == before[f"query/query_{RATERS[1]}.nii.gz"]
    # The first file was replaced as a whole: the new mask is all background.
    assert not np.asarray(nibabel.load(output / f"query/query_{RATERS[0]}.nii.gz").dataobj).any()
    assert temporary_files(output) == []


def _run_engine_with_saver(saver: CheckpointSaver, network: torch.nn.Module) -> None:
    engine = Engine(lambda engine, batch: network.weight.data.add_(1.0))
    saver.attach(engine)
    engine.run([0, 1], max_epochs=1)


def test_bundle_checkpoint_saver_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(network.weight)
    options = {"save_dir": str(tmp_path), "save_dict": {"checkpoint": network}, "save_final": True, "final_filename": "stage1.pt"}
    _run_engine_with_saver(AtomicCheckpointSaver(**options), network)
    path = tmp_path / "stage1.pt"
    before = path.read_bytes()
    assert torch.equal(torch.load(path, weights_only=True)["weight"], torch.full((1, 2), 2.0))

    def partial_checkpoint(state: object, stream) -> None:
        stream.write(b"PK\x03\x04partial")

    monkeypatch.setattr(torch, "save", _fail_from_call(1, partial_checkpoint, torch.save))
    with pytest.raises(OSError, match="No space left"):
        _run_engine_with_saver(AtomicCheckpointSaver(**options), network)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["stage1.pt"]


def test_monai_checkpoint_saver_is_not_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for AtomicCheckpointSaver: MONAI 1.6.1's saver truncates the previous file."""
    network = torch.nn.Linear(2, 1, bias=False)
    options = {"save_dir": str(tmp_path), "save_dict": {"checkpoint": network}, "save_final": True, "final_filename": "stage1.pt"}
    _run_engine_with_saver(CheckpointSaver(**options), network)

    def partial_checkpoint(state: object, path: str) -> None:
        Path(path).write_bytes(b"PK\x03\x04partial")

    monkeypatch.setattr(torch, "save", _fail_from_call(1, partial_checkpoint, torch.save))
    with pytest.raises(OSError):
        _run_engine_with_saver(CheckpointSaver(**options), network)
    with pytest.raises((RuntimeError, EOFError, pickle.UnpicklingError)):
        torch.load(tmp_path / "stage1.pt", weights_only=True)


def test_bundle_configs_save_checkpoints_atomically() -> None:
    """Every checkpoint saver in the bundle's configuration files is japc's atomic one."""
    targets = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                targets.append(node["_target_"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for path in BUNDLE_CONFIGS.glob("*.json"):
        collect(json.loads(path.read_text(encoding="utf-8")))
    assert targets.count("japc.pipeline.bundle.AtomicCheckpointSaver") == 2
    assert "CheckpointSaver" not in targets
