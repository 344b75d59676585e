"""The demo: offline data, training, evaluation and inference in one call."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from japc.pipeline.demo import DISCLAIMER, run_demo
from japc.pipeline.demo_data import DEMO_CLASSES


def test_demo_runs_whole_road(tmp_path: Path) -> None:
    messages: list[str] = []
    result = run_demo(cache_dir=tmp_path / "cache", output_dir=tmp_path / "demo", iterations=2, echo=messages.append)

    assert "Licence" in messages[0]
    report = messages[-1]
    assert DISCLAIMER in report
    assert "Dice_m" in report

    summary = json.loads((tmp_path / "demo" / "evaluation" / "summary.json").read_text())
    assert set(summary["dice"]) == set(DEMO_CLASSES)
    assert all(len(row) == 4 for row in summary["dice"].values())
    assert summary["num_queries"] == 2

    record = result["inference"][0]
    query = nib.load(record["query"])
    assert len(record["masks"]) == 4
    for path in record["masks"].values():
        mask = nib.load(path)
        assert mask.shape == query.shape
        assert np.allclose(mask.affine, query.affine)
        assert path in report
    assert record["overlays"]
    assert Path(result["checkpoint"]).is_file()
