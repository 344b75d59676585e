"""Support/query evaluation of a trained segmenter on a datalist split, with per-rater Dice.

Protocol (SSL-ALPNet and JAPC): one scan of the split is the support and the others are the
queries. For each class, support slices at 1/6, 1/2 and 5/6 of the support's class range
segment the query slices of the matching third of the query's class z-range. In the oracle
variant (the published protocol) only slices inside the query's ground-truth z-range are
segmented and scored, so the ground truth chooses the slices. The no-oracle variant segments
and scores every slice of the query. Dice is the 3D Dice per query scan and rater,
summed over the scored slices. Raters are matched by their id in the datalist. Dice is computed
at the network's in-plane size after preprocessing, as in the reference implementations.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from japc.errors import DatalistError
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.checkpoints import load_model
from japc.pipeline.datalist import MultiRaterDatalist, load_datalist
from japc.pipeline.files import atomic_path, atomic_write_text, ensure_writable_folder
from japc.pipeline.metrics import dice_from_counts, overlap_counts, summarize_dice
from japc.pipeline.preprocessing import case_preprocessing
from japc.pipeline.protocol import assign_chunks, slices_with_class
from japc.pipeline.support import SupportSet, encode_slices, encode_support

__all__ = ["EvaluationSettings", "PreparedCase", "evaluate", "format_summary"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSettings:
    """Options of the evaluation protocol.

    Attributes:
        supports: ``first`` (the first case of the split), ``all`` (every case in turn), or a
            list of case ids.
        num_chunks: chunks of the class range (3 in the published protocol).
        shots: support slices per chunk.
        oracle: score only the query's ground-truth class z-range (published protocol).
        classes: class names to evaluate; None for the checkpoint's ``data.test_classes``, or
            all classes of the datalist when it lists none.
        batch_size: slices per encoder batch.
    """

    supports: str | list[str] = "first"
    num_chunks: int = 3
    shots: int = 1
    oracle: bool = True
    classes: list[str] | None = None
    batch_size: int = 32


@dataclass
class PreparedCase:
    """A preprocessed case: ``image`` ``[1, h, w, D]`` float32, ``label`` ``[R, h, w, D]`` uint8."""

    case: str
    image: torch.Tensor
    label: torch.Tensor
    features: dict[int, torch.Tensor] = field(default_factory=dict)


def plain_tensor(value: Any) -> torch.Tensor:
    """Return ``value`` as a plain tensor: MetaTensor dispatch costs more than tiny operations."""
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def _prepare_cases(datalist: MultiRaterDatalist, split: str, preprocessing) -> list[PreparedCase]:
    transform = case_preprocessing(preprocessing, datalist)
    prepared = []
    for case in tqdm(datalist.cases(split), desc="loading", unit="case"):
        data = transform(dict(case))
        prepared.append(
            PreparedCase(
                case=case["case"],
                image=plain_tensor(data["image"]).float().clone(),
                label=plain_tensor(data["label"]).to(torch.uint8).clone(),
            )
        )
    return prepared


def _resolve_supports(settings: EvaluationSettings, cases: list[PreparedCase], split: str) -> list[str]:
    ids = [c.case for c in cases]
    if settings.supports == "first":
        return ids[:1]
    if settings.supports == "all":
        return ids
    requested = [settings.supports] if isinstance(settings.supports, str) else list(settings.supports)
    unknown = [case for case in requested if case not in ids]
    if unknown:
        raise DatalistError(
            f"Support case(s) {unknown} are not in split {split!r}; use 'first', 'all' or ids such as {ids[:3]}."
        )
    return requested


def _support_sets(
    model: FewShotSegmenter, case: PreparedCase, classes: dict[str, int], settings: EvaluationSettings
) -> dict[str, SupportSet]:
    sets = {}
    for name, value in classes.items():
        support = encode_support(
            model, case.image, case.label == value, settings.num_chunks, settings.shots, settings.batch_size
        )
        if support is None:
            logger.warning("Support case %s does not contain class %r; it is skipped as support for it", case.case, name)
            continue
        sets[name] = support
    return sets


@torch.inference_mode()
def _predict(
    model: FewShotSegmenter,
    support: SupportSet,
    query_features: dict[int, torch.Tensor],
    chunk_of_slice: dict[int, int],
    image_size: tuple[int, int],
    num_raters: int,
    depth: int,
) -> torch.Tensor:
    """Return binary predictions ``[R, h, w, D]`` (zero outside the assigned slices)."""
    prediction = torch.zeros((num_raters, *image_size, depth), dtype=torch.bool)
    for chunk in range(support.num_chunks):
        slices = [z for z, c in chunk_of_slice.items() if c == chunk]
        if not slices:
            continue
        features = torch.stack([query_features[z] for z in slices])
        logits = support.logits(model, chunk, features, image_size)
        # A comparison of the two channels is much faster on the CPU than argmax over a size-2 axis.
        prediction[..., slices] = (logits[:, :, 1] > logits[:, :, 0]).permute(1, 2, 3, 0).cpu()
    return prediction


def evaluate(
    checkpoint: str | Path,
    datalist_path: str | Path,
    split: str,
    output_dir: str | Path,
    settings: EvaluationSettings | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a checkpoint on a datalist split and write the per-rater Dice tables.

    Writes ``dice_per_case.csv`` (one row per support, query case, class and rater) and
    ``summary.json`` (Dice_{r,c}, Dice_c, Dice_r, Dice_m and the protocol) in ``output_dir``.

    Args:
        checkpoint: checkpoint written by ``japc train``.
        datalist_path: multi-rater datalist.
        split: split to evaluate.
        output_dir: folder for the tables.
        settings: protocol options.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The summary dictionary.
    """
    settings = settings or EvaluationSettings()
    started = time.perf_counter()
    output_dir = ensure_writable_folder(output_dir)
    model, config, _ = load_model(checkpoint, device)
    datalist = load_datalist(datalist_path)
    classes = _select_classes(datalist, settings.classes or config.data.test_classes or None)
    cases = _prepare_cases(datalist, split, config.preprocessing)
    if len(cases) < 2:
        raise DatalistError(f"Split {split!r} of {datalist.path} has {len(cases)} case(s); evaluation needs a support and at least one query.")
    support_ids = _resolve_supports(settings, cases, split)
    by_id = {c.case: c for c in cases}
    support_sets = {sid: _support_sets(model, by_id[sid], classes, settings) for sid in support_ids}

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for query in tqdm(cases, desc="evaluating", unit="query"):
        rows.extend(_evaluate_query(model, query, support_sets, classes, datalist.raters, settings, skipped))
        query.features.clear()
    if not rows:
        raise DatalistError(
            f"No support/query pair of split {split!r} shares a class, so nothing was scored; check the labels."
        )

    summary = summarize_dice(rows)
    summary.update(
        checkpoint=str(Path(checkpoint).resolve()),
        datalist=str(datalist.path),
        split=split,
        classes=list(classes),
        raters=list(datalist.raters),
        protocol=dict(
            asdict(settings),
            supports=support_ids,
            z_range="ground truth of the query (oracle)" if settings.oracle else "whole query volume",
            resolution=f"network input size {config.preprocessing.spatial_size} after preprocessing",
        ),
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 1),
    )
    with atomic_path(output_dir / "dice_per_case.csv") as temporary:
        pd.DataFrame(rows).to_csv(temporary, index=False)
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("Evaluation wrote %s and %s", output_dir / "dice_per_case.csv", output_dir / "summary.json")
    return summary


def _select_classes(datalist: MultiRaterDatalist, names: list[str] | None) -> dict[str, int]:
    if not names:
        return dict(datalist.classes)
    unknown = [n for n in names if n not in datalist.classes]
    if unknown:
        raise DatalistError(f"Unknown class(es) {unknown} for {datalist.path}; valid classes are {sorted(datalist.classes)}.")
    return {n: datalist.classes[n] for n in names}


def _evaluate_query(
    model: FewShotSegmenter,
    query: PreparedCase,
    support_sets: dict[str, dict[str, SupportSet]],
    classes: dict[str, int],
    raters: list[str],
    settings: EvaluationSettings,
    skipped: list[str],
) -> list[dict[str, Any]]:
    image_size = tuple(query.image.shape[1:3])
    depth = query.image.shape[-1]
    ranges: dict[str, tuple[int, int]] = {}
    for name, value in classes.items():
        if settings.oracle:
            present = slices_with_class(query.label == value)
            if len(present) == 0:
                skipped.append(f"{query.case}: class {name} absent, not scored (oracle z-range undefined)")
                continue
            ranges[name] = (int(present[0]), int(present[-1]))
        else:
            ranges[name] = (0, depth - 1)
    needed = sorted({z for first, last in ranges.values() for z in range(first, last + 1)})
    if needed:
        features = encode_slices(model, query.image[..., needed].permute(3, 0, 1, 2), settings.batch_size)
        query.features = dict(zip(needed, features))

    rows = []
    for support_id, sets in support_sets.items():
        if support_id == query.case:
            continue
        for name, (first, last) in ranges.items():
            if name not in sets:
                continue
            chunk_of_slice = assign_chunks(first, last, settings.num_chunks)
            prediction = _predict(model, sets[name], query.features, chunk_of_slice, image_size, len(raters), depth)
            target = query.label[..., first : last + 1] == classes[name]
            for r, rater in enumerate(raters):
                tp, fp, fn = overlap_counts(prediction[r, ..., first : last + 1], target[r])
                rows.append(
                    {
                        "support": support_id,
                        "query": query.case,
                        "class": name,
                        "rater": rater,
                        "dice": dice_from_counts(tp, fp, fn),
                        "tp": tp,
                        "fp": fp,
                        "fn": fn,
                        "scored_slices": last - first + 1,
                    }
                )
    return rows


def format_summary(summary: dict[str, Any]) -> str:
    """Render Dice_{r,c} with Dice_c per row, Dice_r per column and Dice_m, in percent."""
    raters = summary["raters"]
    width = max([10, *(len(r) + 2 for r in raters)])
    name_width = max([16, *(len(c) + 2 for c in summary["dice"])])

    def cell(value: float | None) -> str:
        return f"{'-':>{width}}" if value is None else f"{100 * value:>{width}.2f}"

    lines = [f"{'class':<{name_width}}" + "".join(f"{r:>{width}}" for r in raters) + f"{'Dice_c':>{width}}"]
    for name, row in summary["dice"].items():
        cells = "".join(cell(row.get(r)) for r in raters)
        lines.append(f"{name:<{name_width}}{cells}{cell(summary['dice_class'][name])}")
    rater_cells = "".join(cell(summary["dice_rater"].get(r)) for r in raters)
    lines.append(f"{'Dice_r':<{name_width}}{rater_cells}{cell(summary['dice_mean'])}")
    lines.append(
        f"Dice_m = {100 * summary['dice_mean']:.2f} % over {summary['num_supports']} support(s) and "
        f"{summary['num_queries']} query case(s); z-range: {summary['protocol']['z_range']}."
    )
    empty = {rater: count for rater, count in summary.get("empty_pairs", {}).items() if count}
    if empty:
        counts = ", ".join(f"{rater} {count}" for rater, count in empty.items())
        lines.append(
            f"Pairs where a rater drew nothing and the prediction is empty too score 1.0: {counts} of "
            f"{summary['num_rows'] // max(1, len(summary['raters']))} per rater."
        )
    return "\n".join(lines)
