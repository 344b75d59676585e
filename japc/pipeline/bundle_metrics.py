"""Per-rater Dice for MONAI's metric handlers, and japc's Dice tables from an evaluator run.

:class:`PerRaterDiceMetric` is a ``CumulativeIterationMetric``: wrapped in MONAI's
``IgniteMetricHandler``, its aggregate (the mean Dice, a scalar) is the evaluator's key metric,
and its buffer ``[N, R]`` (Dice per scored item and rater) is the ``metric_details`` that
``MetricsSaver`` writes to ``<metric name>_raw.csv``. :class:`DiceTableSaver` turns the same
buffer into japc's ``dice_per_case.csv`` and ``summary.json`` (Dice_{r,c}, Dice_c, Dice_r and
Dice_m, see :func:`japc.pipeline.metrics.summarize_dice`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, string_list_all_gather

from japc.errors import JapcError
from japc.pipeline.files import atomic_path, atomic_write_text
from japc.pipeline.metrics import summarize_dice

__all__ = ["per_rater_dice", "PerRaterDiceMetric", "DiceTableSaver", "pair_name", "pair_metadata"]

logger = logging.getLogger(__name__)

# Separates the fields of an item name ("support=...;query=...;class=...") in the CSV files.
_FIELD_SEPARATOR = ";"


def per_rater_dice(prediction: torch.Tensor, target: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """Dice per item and rater, summed over all voxels of each mask (3D Dice for volumes).

    Args:
        prediction: binary masks ``[B, R, ...]`` (non-zero is foreground).
        target: binary masks of the same shape.
        empty_score: the value when both masks are empty. The default 1.0 follows
            ``japc evaluate`` (nothing to find and nothing found), and ``nan`` leaves such
            pairs out of the mean.

    Returns:
        ``[B, R]`` float32, ``2 TP / (2 TP + FP + FN)``.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"Prediction shape {tuple(prediction.shape)} differs from target shape {tuple(target.shape)}.")
    if prediction.ndim < 3:
        raise ValueError(f"Expected masks [B, R, spatial...], got shape {tuple(prediction.shape)}.")
    predicted = prediction.bool().flatten(2)
    expected = target.bool().flatten(2)
    true_positives = (predicted & expected).sum(-1).double()
    false_positives = (predicted & ~expected).sum(-1).double()
    false_negatives = (~predicted & expected).sum(-1).double()
    denominator = 2 * true_positives + false_positives + false_negatives
    dice = torch.where(
        denominator > 0, 2 * true_positives / denominator.clamp(min=1), torch.full_like(denominator, empty_score)
    )
    return dice.float()


class PerRaterDiceMetric(CumulativeIterationMetric):
    """Dice of every item and rater, accumulated over an evaluation run.

    Each call takes predictions and targets ``[B, R, ...]`` (batch-first tensors, or lists of
    ``[R, ...]`` tensors) where channel ``r`` is the binary mask of rater ``r``, and buffers the
    Dice ``[B, R]``. :meth:`aggregate` reduces the buffer with ``reduction``; the default
    ``"mean"`` gives one scalar, the form a key metric must have for best-checkpoint saving.

    Args:
        reduction: MONAI metric reduction of the ``[N, R]`` buffer (``"mean"``, ``"mean_batch"``
            for one value per rater, ``"none"``, ...). NaN entries are left out.
        get_not_nans: also return the count of non-NaN entries.
        empty_score: Dice when both masks of an item are empty (see :func:`per_rater_dice`).
    """

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        empty_score: float = 1.0,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.empty_score = empty_score

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError("PerRaterDiceMetric needs target masks y.")
        return per_rater_dice(y_pred, y, self.empty_score)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered Dice ``[N, R]``; returns the result (and the non-NaN counts if requested)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise JapcError("PerRaterDiceMetric has no results to aggregate; no item was scored.")
        result, not_nans = do_metric_reduction(data.clone(), reduction or self.reduction)
        return (result, not_nans) if self.get_not_nans else result


class DiceTableSaver:
    """Ignite handler that writes japc's Dice tables at the end of an evaluator run.

    Every evaluation item names its support, query and class in the batch key ``pair`` (a
    string ``support=<id>;query=<id>;class=<name>``). At the end of the run the handler pairs
    these names with the ``[N, R]`` Dice details of ``metric_name`` and writes, in
    ``save_dir``:

    - ``dice_per_case.csv``: one row per support, query, class and rater (columns
      ``support``, ``query``, ``class``, ``rater``, ``dice``), as ``japc evaluate`` writes it,
      without the voxel counts;
    - ``summary.json``: :func:`~japc.pipeline.metrics.summarize_dice` of those rows.

    Args:
        save_dir: output folder.
        raters: rater ids in the order of the metric's channels.
        metric_name: name of the ``IgniteMetricHandler`` with ``save_details=True``.
        save_rank: the process that writes the files.
    """

    def __init__(self, save_dir: str | Path, raters: list[str], metric_name: str, save_rank: int = 0) -> None:
        self.save_dir = Path(save_dir)
        self.raters = list(raters)
        self.metric_name = metric_name
        self.save_rank = save_rank
        self._pairs: list[str] = []
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Collect item names every iteration and write the tables when the run completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._pairs = []

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            names = item["pair"]
            self._pairs.extend([names] if isinstance(names, str) else list(names))

    def __call__(self, engine: Engine) -> None:
        pairs = string_list_all_gather(self._pairs) if idist.get_world_size() > 1 else self._pairs
        if idist.get_rank() != self.save_rank:
            return
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise JapcError(
                f"The evaluator has no details for metric {self.metric_name!r}; set save_details=True on its "
                "IgniteMetricHandler and give DiceTableSaver the key metric's name."
            )
        values = torch.as_tensor(details).reshape(len(pairs), -1)
        if values.shape[1] != len(self.raters):
            raise JapcError(
                f"The metric has {values.shape[1]} rater columns but {len(self.raters)} rater ids were given; "
                "give one id per rater, in the datalist's order."
            )
        rows = []
        for name, row in zip(pairs, values.tolist()):
            fields = dict(part.split("=", 1) for part in name.split(_FIELD_SEPARATOR))
            for rater, dice in zip(self.raters, row):
                rows.append(
                    {
                        "support": fields["support"],
                        "query": fields["query"],
                        "class": fields["class"],
                        "rater": rater,
                        "dice": dice,
                    }
                )

        self.summary = summarize_dice(rows)
        self.summary.update(raters=self.raters, metric=self.metric_name)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.save_dir / "dice_per_case.csv") as temporary:
            pd.DataFrame(rows).to_csv(temporary, index=False)
        atomic_write_text(self.save_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")
        logger.info(
            "Dice_m %.4f over %d scored pairs; wrote %s",
            self.summary["dice_mean"],
            len(pairs),
            self.save_dir / "summary.json",
        )


def pair_name(support: str, query: str, class_name: str) -> str:
    """Name an evaluation item; :class:`DiceTableSaver` parses it back."""
    return f"support={support}{_FIELD_SEPARATOR}query={query}{_FIELD_SEPARATOR}class={class_name}"


def pair_metadata(batch: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, str]]:
    """Give each evaluation item its name as ``filename_or_obj``, the row label of ``MetricsSaver``."""
    items = batch if isinstance(batch, list) else [batch]
    names: list[str] = []
    for item in items:
        names.extend([item["pair"]] if isinstance(item["pair"], str) else list(item["pair"]))
    return [{"filename_or_obj": name} for name in names]
