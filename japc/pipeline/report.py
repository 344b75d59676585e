"""Reports over evaluation runs: Dice tables, a bar plot per rater, paired t-tests.

The tables follow the layout of "Attention-Based Prototype Calibration for Multi-Rater Few-Shot
Medical Image Segmentation" (Vu, Ho, Xie): Dice per class with the mean Dice_m, and Dice per
rater.

An evaluation run is a folder written by ``japc evaluate`` (``summary.json`` and
``dice_per_case.csv``). Runs are compared over the supports they share: for each support the
run's Dice_m (mean over its queries, classes and raters) forms one pair, and a one-tailed
paired t-test asks whether a run's Dice_m exceeds the baseline's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from japc.errors import JapcError  # noqa: E402
from japc.pipeline.files import atomic_path, atomic_write_text, ensure_writable_folder  # noqa: E402
from japc.pipeline.metrics import summarize_dice  # noqa: E402

__all__ = ["EvaluationRun", "load_run", "paired_t_test", "dice_table", "plot_rater_bars", "write_report"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationRun:
    """One evaluation run: its name, per-case rows and summary."""

    name: str
    folder: Path
    rows: pd.DataFrame
    summary: dict[str, Any]


def load_run(folder: str | Path, name: str | None = None) -> EvaluationRun:
    """Read ``dice_per_case.csv`` of an evaluation folder and summarise it.

    Raises:
        JapcError: the folder lacks ``dice_per_case.csv`` or the file lacks required columns.
    """
    folder = Path(folder)
    path = folder / "dice_per_case.csv"
    if not path.is_file():
        raise JapcError(f"{path} not found; give folders written by `japc evaluate --output`.")
    rows = pd.read_csv(path)
    missing = {"support", "query", "class", "rater", "dice"} - set(rows.columns)
    if missing:
        raise JapcError(f"{path} lacks the column(s) {sorted(missing)}; it was not written by japc evaluate.")
    rows["rater"] = rows["rater"].astype(str)
    rows["class"] = rows["class"].astype(str)
    rows["support"] = rows["support"].astype(str)
    summary = summarize_dice(rows.to_dict("records"))
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        summary["protocol"] = json.loads(summary_path.read_text()).get("protocol", {})
    return EvaluationRun(name or folder.name, folder, rows, summary)


def paired_t_test(baseline: EvaluationRun, candidate: EvaluationRun) -> dict[str, Any]:
    """One-tailed paired t-test of per-support Dice_m, H1: candidate > baseline.

    Returns:
        ``{"n", "mean_difference", "t", "p", "supports"}``; ``t`` and ``p`` are NaN when fewer
        than two supports are shared or every difference is equal.
    """
    shared = sorted(set(baseline.summary["per_support"]) & set(candidate.summary["per_support"]))
    first = np.array([baseline.summary["per_support"][s] for s in shared])
    second = np.array([candidate.summary["per_support"][s] for s in shared])
    result: dict[str, Any] = {"n": len(shared), "supports": shared}
    result["mean_difference"] = float(np.mean(second - first)) if shared else float("nan")
    if len(shared) < 2 or np.allclose(second - first, (second - first)[0]):
        result.update(t=float("nan"), p=float("nan"))
        return result
    test = stats.ttest_rel(second, first, alternative="greater")
    result.update(t=float(test.statistic), p=float(test.pvalue))
    return result


def dice_table(runs: list[EvaluationRun]) -> str:
    """Markdown tables: Dice_c per class and Dice_m, then Dice_r per rater, in percent."""
    classes = sorted({c for run in runs for c in run.summary["dice_class"]})
    raters = sorted({r for run in runs for r in run.summary["dice_rater"]})
    lines = ["| run | " + " | ".join(classes) + " | Dice_m |", "|---" * (len(classes) + 2) + "|"]
    for run in runs:
        cells = [_percent(run.summary["dice_class"].get(c)) for c in classes]
        lines.append(f"| {run.name} | " + " | ".join(cells) + f" | {_percent(run.summary['dice_mean'])} |")
    lines += ["", "| run | " + " | ".join(raters) + " |", "|---" * (len(raters) + 1) + "|"]
    for run in runs:
        cells = [_percent(run.summary["dice_rater"].get(r)) for r in raters]
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def plot_rater_bars(runs: list[EvaluationRun], path: Path) -> Path:
    """Write a grouped bar plot of Dice_r (%) per rater, one bar per run."""
    raters = sorted({r for run in runs for r in run.summary["dice_rater"]})
    positions = np.arange(len(raters))
    width = 0.8 / max(1, len(runs))
    figure, axis = plt.subplots(figsize=(max(5, 1.4 * len(raters) + 2), 4), dpi=100)
    for index, run in enumerate(runs):
        values = [100 * run.summary["dice_rater"].get(r, np.nan) for r in raters]
        axis.bar(positions + (index - (len(runs) - 1) / 2) * width, values, width, label=run.name)
    axis.set_xticks(positions, raters)
    axis.set_ylabel("Dice_r (%)")
    axis.set_title("Per-rater Dice")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, bbox_inches="tight")
    plt.close(figure)
    return path


def write_report(folders: list[str | Path], output: str | Path, names: list[str] | None = None) -> dict[str, Any]:
    """Compare evaluation runs; the first run is the baseline of the t-tests.

    Writes ``report.md``, ``report.json`` and ``dice_per_rater.png`` in ``output``.

    Returns:
        ``{"table", "tests", "plot", "runs"}``.
    """
    if names is not None and len(names) != len(folders):
        raise JapcError(f"{len(names)} names were given for {len(folders)} runs; give one name per run or none.")
    output = ensure_writable_folder(output)
    runs = [load_run(folder, names[i] if names else None) for i, folder in enumerate(folders)]
    table = dice_table(runs)
    tests = {run.name: paired_t_test(runs[0], run) for run in runs[1:]}
    plot = plot_rater_bars(runs, output / "dice_per_rater.png")

    lines = ["# Per-rater Dice report", "", table, ""]
    if tests:
        lines.append(f"One-tailed paired t-test over shared supports (H1: run > {runs[0].name}), on per-support Dice_m:")
        lines.append("")
        for name, test in tests.items():
            lines.append(
                f"- {name} vs {runs[0].name}: n = {test['n']}, mean difference = {100 * test['mean_difference']:+.2f} "
                f"points, t = {test['t']:.3f}, p = {test['p']:.4g}"
            )
    protocol = runs[0].summary.get("protocol", {})
    if protocol:
        lines += ["", f"Protocol of {runs[0].name}: z-range {protocol.get('z_range', '?')}, {protocol.get('resolution', '')}."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(output / "report.md", text)
    report = {
        "runs": {run.name: {k: run.summary[k] for k in ("dice", "dice_class", "dice_rater", "dice_mean", "per_support")} for run in runs},
        "tests": tests,
        "plot": str(plot),
        "table": table,
    }
    atomic_write_text(output / "report.json", json.dumps(report, indent=2) + "\n")
    logger.info("Report written to %s", output)
    return {"table": table, "tests": tests, "plot": plot, "runs": runs, "text": text}
