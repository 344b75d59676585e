"""Reports over evaluation runs: tables, bar plot and the paired t-test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from japc.cli import main
from japc.errors import JapcError
from japc.pipeline.report import load_run, paired_t_test, write_report


def _write_run(folder: Path, dice_by_support: dict[str, float]) -> Path:
    rows = []
    for support, dice in dice_by_support.items():
        for query in ("q1", "q2"):
            for rater, offset in (("r0", 0.0), ("r1", 0.1)):
                rows.append({"support": support, "query": query, "class": "nodule", "rater": rater, "dice": dice + offset})
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "dice_per_case.csv", index=False)
    return folder


def test_paired_t_test_matches_scipy(tmp_path: Path) -> None:
    base = load_run(_write_run(tmp_path / "base", {"s1": 0.50, "s2": 0.40, "s3": 0.60, "s4": 0.55}))
    japc = load_run(_write_run(tmp_path / "japc", {"s1": 0.55, "s2": 0.43, "s3": 0.61, "s4": 0.60, "s5": 0.9}))
    result = paired_t_test(base, japc)
    first = np.array([0.55, 0.45, 0.65, 0.60])  # per-support Dice_m: mean of r0 and r1 = dice + 0.05
    second = np.array([0.60, 0.48, 0.66, 0.65])
    expected = stats.ttest_rel(second, first, alternative="greater")
    assert result["n"] == 4
    assert result["supports"] == ["s1", "s2", "s3", "s4"]
    assert result["mean_difference"] == pytest.approx(float(np.mean(second - first)))
    assert result["t"] == pytest.approx(float(expected.statistic))
    assert result["p"] == pytest.approx(float(expected.pvalue))
    assert result["p"] < 0.05


def test_report_writes_table_plot_and_tests(tmp_path: Path) -> None:
    base = _write_run(tmp_path / "base", {"s1": 0.5, "s2": 0.4, "s3": 0.6})
    better = _write_run(tmp_path / "better", {"s1": 0.6, "s2": 0.45, "s3": 0.62})
    report = write_report([base, better], tmp_path / "report", names=["ALPNet", "ALPNet+JAPC"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| ALPNet | 55.00 | 55.00 |" in text  # nodule Dice_c and Dice_m of the base
    assert "| ALPNet+JAPC |" in text
    assert "n = 3" in text
    assert report["tests"]["ALPNet+JAPC"]["n"] == 3
    with Image.open(report["plot"]) as picture:
        assert picture.size[0] > 200


def test_report_command_prints_n_and_p(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _write_run(tmp_path / "base", {"s1": 0.5, "s2": 0.4, "s3": 0.6})
    other = _write_run(tmp_path / "other", {"s1": 0.52, "s2": 0.41, "s3": 0.66})
    assert main(["report", str(base), str(other), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "n = 3" in printed
    assert "p = " in printed
    assert (tmp_path / "out" / "dice_per_rater.png").is_file()


def test_folder_without_table_is_reported(tmp_path: Path) -> None:
    with pytest.raises(JapcError, match="dice_per_case.csv not found"):
        load_run(tmp_path)
