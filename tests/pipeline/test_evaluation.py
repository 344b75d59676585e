"""Support/query evaluation: table layout and Dice counts that match the ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from japc.errors import DatalistError
from japc.pipeline.datalist import load_datalist
from japc.pipeline.evaluation import EvaluationSettings, evaluate, format_summary
from tests.synthetic import CLASSES, RATERS


def test_every_support_query_class_rater_row(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    summary = evaluate(trained_checkpoint, synthetic_datalist, "test", tmp_path, EvaluationSettings(supports="all"))
    rows = pd.read_csv(tmp_path / "dice_per_case.csv")
    assert len(rows) == 3 * 2 * len(CLASSES) * len(RATERS)  # 3 supports x 2 queries each
    assert set(rows["rater"]) == set(RATERS)
    assert (rows["support"] != rows["query"]).all()
    assert rows["dice"].between(0.0, 1.0).all()
    assert summary["num_supports"] == 3
    assert set(summary["dice"]) == set(CLASSES)
    assert json.loads((tmp_path / "summary.json").read_text())["dice_mean"] == pytest.approx(summary["dice_mean"])


def test_true_positives_plus_misses_equal_ground_truth(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path
) -> None:
    evaluate(trained_checkpoint, synthetic_datalist, "test", tmp_path, EvaluationSettings(supports="first"))
    rows = pd.read_csv(tmp_path / "dice_per_case.csv")
    datalist = load_datalist(synthetic_datalist)
    for row in rows.itertuples():
        label = np.asarray(nib.load(datalist.case(row.query)["label"][row.rater]).dataobj)
        assert row.tp + row.fn == int((label == CLASSES[row._3]).sum())
        expected_dice = 2 * row.tp / (2 * row.tp + row.fp + row.fn) if row.tp + row.fp + row.fn else 1.0
        assert row.dice == pytest.approx(expected_dice)


def test_oracle_scores_class_range_only(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    evaluate(trained_checkpoint, synthetic_datalist, "test", tmp_path / "oracle", EvaluationSettings(classes=["bar"]))
    evaluate(
        trained_checkpoint, synthetic_datalist, "test", tmp_path / "whole", EvaluationSettings(classes=["bar"], oracle=False)
    )
    oracle = pd.read_csv(tmp_path / "oracle" / "dice_per_case.csv")
    whole = pd.read_csv(tmp_path / "whole" / "dice_per_case.csv")
    assert set(oracle["scored_slices"]) == {4}  # the bar spans slices 2..5 of 8
    assert set(whole["scored_slices"]) == {8}
    assert (whole["fp"].to_numpy() >= oracle["fp"].to_numpy()).all()


def test_summary_table_lists_raters_and_mean(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    summary = evaluate(trained_checkpoint, synthetic_datalist, "test", tmp_path)
    text = format_summary(summary)
    for rater in RATERS:
        assert rater in text.splitlines()[0]
    assert f"Dice_m = {100 * summary['dice_mean']:.2f} %" in text


def test_unknown_support_case_is_reported(trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path) -> None:
    with pytest.raises(DatalistError, match="case99"):
        evaluate(trained_checkpoint, synthetic_datalist, "test", tmp_path, EvaluationSettings(supports=["case99"]))
