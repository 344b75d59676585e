"""Same seed and inputs, same results: Dice tables, and episodes drawn by data-loader workers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from japc.pipeline.training import EpisodeDataset, EpisodicTrainer
from tests.reliability.common import run_japc
from tests.synthetic import tiny_config

EPISODE_TENSORS = ("support_image", "support_masks", "query_image", "query_masks")


def test_evaluate_twice_gives_identical_tables(
    trained_checkpoint: Path, synthetic_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = [tmp_path / "first", tmp_path / "second"]
    for output in outputs:
        arguments = ["evaluate", str(trained_checkpoint), "--datalist", str(synthetic_datalist), "--output", str(output)]
        assert run_japc(arguments, capsys)[0] == 0
    first, second = ((output / "dice_per_case.csv").read_bytes() for output in outputs)
    assert first == second
    assert first.count(b"\n") == 1 + 2 * 2 * 3  # header, then 2 queries x 2 classes x 3 raters
    summaries = [json.loads((output / "summary.json").read_text(encoding="utf-8")) for output in outputs]
    for summary in summaries:
        summary.pop("seconds")
    assert summaries[0] == summaries[1]


def _episodes(loader: DataLoader) -> dict[int, dict]:
    return {int(episode["step"]): episode for episode in loader}


def test_loader_workers_draw_distinct_reproducible_episodes(synthetic_datalist: Path, tmp_path: Path) -> None:
    """Two worker processes draw, for every step, the episode of a single-process loader; no two steps repeat."""
    volumes = EpisodicTrainer(tiny_config(synthetic_datalist, tmp_path)).load_volumes()
    dataset = EpisodeDataset(volumes, num_raters=3, pseudo_styles=True, seed=7)
    steps = range(3, 11)
    single = _episodes(DataLoader(dataset, batch_size=None, sampler=steps, num_workers=0))
    workers = _episodes(DataLoader(dataset, batch_size=None, sampler=steps, num_workers=2))

    assert sorted(workers) == list(steps)
    for step in steps:
        for key in EPISODE_TENSORS:
            assert torch.equal(workers[step][key], single[step][key]), f"step {step}, {key}"
        assert (workers[step]["case"], workers[step]["slice_index"]) == (single[step]["case"], single[step]["slice_index"])
    for first, second in itertools.combinations(steps, 2):
        assert not torch.equal(workers[first]["query_image"], workers[second]["query_image"]), (first, second)
        assert not torch.equal(workers[first]["support_masks"], workers[second]["support_masks"]), (first, second)
