"""The japc command: exit codes and one-line messages for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from japc.cli import main


def test_missing_checkpoint_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datalist = tmp_path / "datalist.json"
    datalist.write_text("{}")
    status = main(["evaluate", str(tmp_path / "none.pt"), "--datalist", str(datalist), "--output", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert error[-1].startswith("japc evaluate: error: Checkpoint file not found")
    assert "none.pt" in error[-1]
    assert "Traceback" not in "\n".join(error)
    assert not (tmp_path / "o").exists()  # the failed command leaves no empty output folder


def test_bad_config_key_gives_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("training:\n  iteratons: 5\n")
    status = main(["train", str(config)])
    error = capsys.readouterr().err
    assert status == 1
    assert "iteratons" in error
    assert "Traceback" not in error


def test_invalid_split_argument_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["import", str(tmp_path), str(tmp_path / "out"), "--split", "test=0081"])
    assert exit_info.value.code == 2
    assert "NAME=FIRST..LAST" in capsys.readouterr().err


def test_corrupt_image_in_datalist_is_reported(synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An error raised inside a MONAI Compose still reaches the user as japc's own message."""
    import json
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(synthetic_datalist.parent, folder)
    content = json.loads((folder / "datalist.json").read_text())
    image = folder / content["training"][0]["image"]
    image.write_bytes(image.read_bytes()[:200])
    config = tmp_path / "run.yaml"
    config.write_text(f"data:\n  datalist: {folder / 'datalist.json'}\noutput_dir: {tmp_path / 'run'}\n")
    status = main(["train", str(config)])
    error = capsys.readouterr().err
    assert status == 1
    assert "case00" in error
    assert "Traceback" not in error


def test_train_evaluate_infer_from_command_line(synthetic_datalist: Path, tmp_path: Path) -> None:
    import json

    import nibabel as nib
    import pandas as pd
    import yaml

    from japc.pipeline.datalist import load_datalist
    from tests.synthetic import RATERS, tiny_config

    config = tiny_config(synthetic_datalist, tmp_path / "run", iterations=4).to_dict()
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["-q", "train", str(config_path), "--set", "training.seed=3"]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "final.pt"
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["training"]["seed"] == 3

    assert main(["-q", "evaluate", str(checkpoint), "--datalist", str(synthetic_datalist), "--output", str(tmp_path / "eval")]) == 0
    rows = pd.read_csv(tmp_path / "eval" / "dice_per_case.csv")
    assert len(rows) == 2 * 2 * len(RATERS)  # two queries, two classes, three raters

    case = load_datalist(synthetic_datalist).cases("test")[1]
    masks = [case["label"][r] for r in RATERS]
    arguments = ["-q", "infer", str(checkpoint), "--support-image", case["image"], "--support-masks", *masks]
    arguments += ["--raters", *RATERS, "--queries", case["image"], "--output", str(tmp_path / "masks"), "--label-value", "2"]
    assert main(arguments) == 0
    written = sorted((tmp_path / "masks").rglob("*.nii.gz"))
    assert len(written) == len(RATERS) + 1
    reference = nib.load(case["image"])
    for path in written:
        assert nib.load(path).shape == reference.shape


@pytest.mark.parametrize("head", ["alpnet", "dspnet"])
@pytest.mark.parametrize("calibration", ["none", "attention"])
def test_each_head_trains_and_evaluates(head: str, calibration: str, synthetic_datalist: Path, tmp_path: Path) -> None:
    import pandas as pd
    import yaml

    from japc.pipeline.checkpoints import read_checkpoint
    from tests.synthetic import tiny_config

    config = tiny_config(synthetic_datalist, tmp_path / "run", calibration=calibration, iterations=4).to_dict()
    config["model"]["head"] = head
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["-q", "train", str(config_path)]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "final.pt"
    state = read_checkpoint(checkpoint)
    assert state["config"]["model"]["head"] == head
    assert state["stage"] == (1 if calibration == "none" else 2)
    assert ("head.channel_weights" in state["model"]) == (head == "dspnet")

    output = tmp_path / "eval"
    assert main(["-q", "evaluate", str(checkpoint), "--datalist", str(synthetic_datalist), "--output", str(output)]) == 0
    rows = pd.read_csv(output / "dice_per_case.csv")
    assert len(rows) == 2 * 2 * 3
    assert rows["dice"].between(0.0, 1.0).all()
    assert ((rows["tp"] + rows["fp"]) > 0).any()  # the model predicts some foreground
