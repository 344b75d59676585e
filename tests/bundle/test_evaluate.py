"""Bundle evaluation (train.json + evaluate.json): metric files, and the Dice of japc evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from japc.pipeline.evaluation import evaluate
from tests.bundle.commands import run_bundle
from tests.synthetic import RATERS


@pytest.fixture(scope="module")
def evaluation(bundle_root: Path, synthetic_datalist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of the bundle's evaluation of the final stage-2 checkpoint on split test."""
    output = tmp_path_factory.mktemp("bundle-evaluation")
    run_bundle(
        "run",
        "--config_file",
        "['configs/train.json','configs/evaluate.json']",
        "--bundle_root",
        str(bundle_root),
        "--datalist",
        str(synthetic_datalist),
        "--ckpt_path",
        str(bundle_root / "models" / "stage2.pt"),
        "--output_dir",
        str(output),
    )
    return output


def test_metric_files(evaluation: Path) -> None:
    names = {path.name for path in evaluation.iterdir()}
    assert {
        "metrics.csv",
        "val_mean_dice_raw.csv",
        "val_mean_dice_summary.csv",
        "dice_per_case.csv",
        "summary.json",
    } <= names
    name, value = (evaluation / "metrics.csv").read_text().strip().split(",")
    assert name == "val_mean_dice"
    assert 0.0 <= float(value) <= 1.0

    with (evaluation / "val_mean_dice_raw.csv").open() as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["filename", "class0", "class1", "class2", "mean"]
    # Support case01 (first of split test) scores queries case02 and case03 for classes blob and bar.
    assert sorted(row[0] for row in rows[1:]) == sorted(
        f"support=case01;query={query};class={name}" for query in ("case02", "case03") for name in ("blob", "bar")
    )
    for row in rows[1:]:
        values = [float(v) for v in row[1:]]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values[3] == pytest.approx(sum(values[:3]) / 3, abs=2e-4)
    mean = sum(float(v) for row in rows[1:] for v in row[1:4]) / 12
    assert float(value) == pytest.approx(mean, abs=1e-4)


def test_dice_equals_japc_evaluate(
    evaluation: Path, bundle_root: Path, synthetic_datalist: Path, tmp_path: Path
) -> None:
    reference = evaluate(bundle_root / "models" / "stage2.pt", synthetic_datalist, "test", tmp_path, device="cpu")
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["raters"] == RATERS
    assert summary["dice_mean"] == pytest.approx(reference["dice_mean"], abs=1e-6)
    ours = pd.read_csv(evaluation / "dice_per_case.csv")
    theirs = pd.read_csv(tmp_path / "dice_per_case.csv")
    merged = theirs.merge(ours, on=["support", "query", "class", "rater"], suffixes=("_japc", "_bundle"))
    assert len(merged) == len(theirs) == len(ours) == 12
    assert (merged["dice_japc"] - merged["dice_bundle"]).abs().max() < 1e-6
