"""Per-rater Dice: hand-computed values, the Ignite handler's scalar key metric, MetricsSaver's CSV files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler, MetricsSaver, from_engine

from japc.errors import JapcError
from japc.pipeline.bundle import DiceTableSaver, PerRaterDiceMetric, pair_metadata, pair_name, per_rater_dice


def _masks(*voxel_lists: list[int], size: int = 6) -> torch.Tensor:
    """Binary masks [R, size] with the listed voxels set, one list per rater."""
    masks = torch.zeros(len(voxel_lists), size, dtype=torch.uint8)
    for rater, voxels in enumerate(voxel_lists):
        masks[rater, voxels] = 1
    return masks


def test_dice_per_item_and_rater() -> None:
    prediction = torch.stack([_masks([0, 1], [], [2, 3, 4]), _masks([5], [0], [])])
    target = torch.stack([_masks([1, 2], [], [2, 3]), _masks([4], [0], [1])])
    dice = per_rater_dice(prediction, target)
    assert dice.shape == (2, 3)
    expected = [[2 * 1 / (2 + 2), 1.0, 2 * 2 / (3 + 2)], [0.0, 1.0, 0.0]]
    torch.testing.assert_close(dice, torch.tensor(expected))


def test_empty_pair_score_is_configurable() -> None:
    dice = per_rater_dice(_masks([], [1])[None], _masks([], [1])[None], empty_score=float("nan"))
    assert math.isnan(dice[0, 0])
    assert dice[0, 1] == 1.0


def test_dice_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differs from target shape"):
        per_rater_dice(torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))


def test_metric_accumulates_and_reduces() -> None:
    metric = PerRaterDiceMetric()
    metric(torch.stack([_masks([0, 1], [2])]), torch.stack([_masks([1], [2])]))
    metric([_masks([0], [3])], [_masks([0], [4])])
    buffer = metric.get_buffer()
    torch.testing.assert_close(buffer, torch.tensor([[2 / 3, 1.0], [1.0, 0.0]]))
    assert metric.aggregate().item() == pytest.approx((2 / 3 + 1.0 + 1.0 + 0.0) / 4)
    per_rater = metric.aggregate(reduction="mean_batch")
    torch.testing.assert_close(per_rater, torch.tensor([5 / 6, 0.5]))


def _item(support: str, query: str, class_name: str, prediction: torch.Tensor, target: torch.Tensor) -> dict:
    return {"pred": prediction, "label": target, "pair": pair_name(support, query, class_name)}


def test_handlers_write_per_case_tables(tmp_path: Path) -> None:
    """IgniteMetricHandler's key metric is a scalar; MetricsSaver and DiceTableSaver write per case and rater."""
    batches = [
        [_item("s", "q1", "blob", _masks([0, 1], [2]), _masks([1], [2]))],
        [
            _item("s", "q2", "blob", _masks([0], [3]), _masks([0], [4])),
            _item("s", "q2", "bar", _masks([], []), _masks([5], [])),
        ],
    ]
    engine = Engine(lambda engine, batch: batch)
    handler = IgniteMetricHandler(
        PerRaterDiceMetric(), output_transform=from_engine(["pred", "label"]), save_details=True
    )
    handler.attach(engine, "val_mean_dice")
    MetricsSaver(
        str(tmp_path), metrics=["val_mean_dice"], metric_details=["val_mean_dice"], batch_transform=pair_metadata
    ).attach(engine)
    DiceTableSaver(tmp_path, raters=["tight", "loose"], metric_name="val_mean_dice").attach(engine)
    engine.run(batches)

    key_metric = engine.state.metrics["val_mean_dice"]
    assert isinstance(key_metric, float)
    expected = [[2 / 3, 1.0], [1.0, 0.0], [0.0, 1.0]]
    assert key_metric == pytest.approx(sum(map(sum, expected)) / 6)

    assert (tmp_path / "metrics.csv").read_text().strip() == f"val_mean_dice,{key_metric}"
    with (tmp_path / "val_mean_dice_raw.csv").open() as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["filename", "class0", "class1", "mean"]
    assert [row[0] for row in rows[1:]] == [
        "support=s;query=q1;class=blob",
        "support=s;query=q2;class=blob",
        "support=s;query=q2;class=bar",
    ]
    for row, values in zip(rows[1:], expected):
        assert [float(v) for v in row[1:]] == pytest.approx([*values, sum(values) / 2], abs=1e-4)

    with (tmp_path / "dice_per_case.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert len(table) == 6
    assert table[1] == {"support": "s", "query": "q1", "class": "blob", "rater": "loose", "dice": "1.0"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Dice_{r,c}: mean over the queries of each class and rater; Dice_m: mean over classes and raters.
    assert summary["dice"]["blob"] == pytest.approx({"tight": (2 / 3 + 1.0) / 2, "loose": 0.5})
    assert summary["dice"]["bar"] == pytest.approx({"tight": 0.0, "loose": 1.0})
    assert summary["dice_mean"] == pytest.approx(((2 / 3 + 1.0) / 2 + 0.5 + 0.0 + 1.0) / 4)
    assert summary["raters"] == ["tight", "loose"]


def test_table_saver_needs_metric_details(tmp_path: Path) -> None:
    engine = Engine(lambda engine, batch: batch)
    IgniteMetricHandler(
        PerRaterDiceMetric(), output_transform=from_engine(["pred", "label"]), save_details=False
    ).attach(engine, "dice")
    DiceTableSaver(tmp_path, raters=["a"], metric_name="dice").attach(engine)
    with pytest.raises(JapcError, match="save_details=True"):
        engine.run([[_item("s", "q", "c", _masks([0]), _masks([0]))]])
