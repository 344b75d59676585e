"""Per-rater Dice: counts, scores and the summary tables Dice_{r,c}, Dice_c, Dice_r and Dice_m."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

__all__ = ["overlap_counts", "dice_from_counts", "dice_score", "summarize_dice"]


def overlap_counts(prediction: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int]:
    """Count true positives, false positives and false negatives of two binary masks of one shape."""
    prediction = prediction.bool()
    target = target.bool()
    true_positives = int((prediction & target).sum())
    false_positives = int((prediction & ~target).sum())
    false_negatives = int((~prediction & target).sum())
    return true_positives, false_positives, false_negatives


def dice_from_counts(true_positives: int, false_positives: int, false_negatives: int) -> float:
    """Return ``2 TP / (2 TP + FP + FN)``; 1.0 when both masks are empty (nothing to find, nothing found)."""
    denominator = 2 * true_positives + false_positives + false_negatives
    if denominator == 0:
        return 1.0
    return 2.0 * true_positives / denominator


def dice_score(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of two binary masks, summed over all their voxels (3D Dice for volumes)."""
    return dice_from_counts(*overlap_counts(prediction, target))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _count_empty_pairs(rows: list[dict[str, Any]], raters: list[str]) -> dict[str, int]:
    if not rows or not all(key in rows[0] for key in ("tp", "fp", "fn")):
        return {}
    counts = {rater: 0 for rater in raters}
    for row in rows:
        if int(row["tp"]) + int(row["fp"]) + int(row["fn"]) == 0:
            counts[row["rater"]] += 1
    return counts


def summarize_dice(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case Dice rows into the tables of the evaluation protocol.

    ``Dice_{r,c}`` is the mean over query scans for each support, then the mean over supports
    (each test scan used in turn as the support weighs equally). ``Dice_c`` is the mean over
    raters, ``Dice_r`` the mean over classes and ``Dice_m`` the mean over both.

    Args:
        rows: dictionaries with keys ``support``, ``query``, ``class``, ``rater`` and ``dice``.

    Returns:
        ``{"dice": {class: {rater: value}}, "dice_class": {class: value},
        "dice_rater": {rater: value}, "dice_mean": value, "per_support": {support: Dice_m},
        "empty_pairs": {rater: count}, "num_supports": int, "num_queries": int, "num_rows": int}``.
        ``empty_pairs`` counts the rows where both the prediction and the ground truth are empty
        (scored 1.0); it is empty when the rows carry no ``tp``, ``fp`` and ``fn`` counts.
    """
    by_support: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        by_support[(row["support"], row["class"], row["rater"])].append(float(row["dice"]))

    per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    per_support_values: dict[str, list[float]] = defaultdict(list)
    for (support, class_name, rater), values in by_support.items():
        support_mean = _mean(values)
        per_pair[(class_name, rater)].append(support_mean)
        per_support_values[support].append(support_mean)

    classes = sorted({c for c, _ in per_pair}, key=str)
    raters = sorted({r for _, r in per_pair}, key=str)
    table = {c: {r: _mean(per_pair[(c, r)]) for r in raters if (c, r) in per_pair} for c in classes}
    dice_class = {c: _mean(list(table[c].values())) for c in classes}
    dice_rater = {r: _mean([table[c][r] for c in classes if r in table[c]]) for r in raters}
    return {
        "dice": table,
        "dice_class": dice_class,
        "dice_rater": dice_rater,
        "dice_mean": _mean([v for c in classes for v in table[c].values()]),
        "per_support": {s: _mean(v) for s, v in sorted(per_support_values.items())},
        "empty_pairs": _count_empty_pairs(rows, raters),
        "num_supports": len({row["support"] for row in rows}),
        "num_queries": len({row["query"] for row in rows}),
        "num_rows": len(rows),
    }
