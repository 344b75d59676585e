"""Run configurations and networks for the MONAI bundle ``bundles/japc_multirater``.

The bundle's ``train.json`` stores japc's run configuration as a ``japc`` entry with the
sections ``data``, ``preprocessing``, ``model`` and ``training`` of :class:`RunConfig`. The
bundle trains one stage per run, so the stage budget is given per run (``--stage 2
--iterations 20``) and mapped here onto ``training.iterations`` and
``training.stage1_iterations``. Evaluation and inference rebuild the network from the
configuration stored in the checkpoint.
"""

from __future__ import annotations

import copy
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from japc.errors import CheckpointError, ConfigError
from japc.networks.factory import build_segmenter
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.config import RunConfig, config_from_dict

__all__ = ["load_checkpoint_state", "bundle_run_config", "checkpoint_run_config", "build_network"]

logger = logging.getLogger(__name__)

# Preprocessing values that stage 1 computes from the training set and stage 2 reuses.
_DATASET_STATISTICS = ("dataset_mean", "dataset_std")


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Accepts a japc checkpoint (``model``, ``config``, ``step``, ...) and a bare state dict.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, or a file that contains no mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file not found: {path}. Train the bundle first or set --ckpt_path to a japc checkpoint."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Checkpoint {path} was rejected by the safe loader (weights_only=True) because it contains objects "
            "other than tensors and plain values. Re-save the weights as a plain state dict."
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"Checkpoint {path} is corrupt or truncated and cannot be read ({error}).") from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"Checkpoint {path} contains a {type(state).__name__}, not a state dict or a japc checkpoint."
        )
    return state


def _sections(sections: Mapping[str, Any], output_dir: str | Path) -> dict[str, Any]:
    content = {name: dict(values or {}) for name, values in copy.deepcopy(dict(sections)).items()}
    content["output_dir"] = str(output_dir)
    return content


def _stage1_state(path: str | Path | None) -> dict[str, Any]:
    if path is None or not Path(path).is_file():
        raise ConfigError(
            f"Stage 2 starts from the stage-1 checkpoint, but {path} does not exist. Run stage 1 first "
            "(python -m monai.bundle run --config_file configs/train.json --stage 1) or set --stage1_checkpoint."
        )
    state = load_checkpoint_state(path)
    if "config" not in state or "step" not in state:
        raise CheckpointError(
            f"{path} is not a japc checkpoint (keys {sorted(state)[:8]}); stage 2 needs the stage-1 checkpoint."
        )
    if int(state.get("stage", 1)) != 1:
        raise CheckpointError(
            f"{path} contains stage-{state['stage']} weights; stage 2 must start from the checkpoint that stage 1 wrote."
        )
    return state


def _check_same_network(content: dict[str, Any], stage1: RunConfig, path: str | Path) -> None:
    """Reject stage-2 settings that differ from stage 1 in the network or the preprocessing."""
    current = config_from_dict(content, source="the bundle configuration")
    differences = []
    for section in ("model", "preprocessing"):
        ours, theirs = getattr(current, section).__dict__, getattr(stage1, section).__dict__
        for key, value in ours.items():
            if key not in _DATASET_STATISTICS and value != theirs[key]:
                differences.append(f"{section}.{key}: {value!r} here, {theirs[key]!r} in stage 1")
    if differences:
        raise ConfigError(
            f"Stage 2 must train the network of stage 1 on the same preprocessing, but these settings differ from "
            f"{path}: {'; '.join(differences)}. Use the stage-1 values."
        )


def bundle_run_config(
    sections: Mapping[str, Any],
    stage: int,
    iterations: int,
    output_dir: str | Path,
    stage1_checkpoint: str | Path | None = None,
    num_processes: int | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
) -> RunConfig:
    """Map the bundle's ``japc`` sections and one stage's budget onto a :class:`RunConfig`.

    Stage 1 trains steps ``[0, N)`` with ``N = iterations * num_processes``. Stage 2 trains
    steps ``[S, S + N)``, where ``S`` is the step stored in the stage-1 checkpoint, so its
    episodes continue those of stage 1 as in ``japc train``. The returned configuration sets
    ``training.stage1_iterations = S`` (stage 2) or ``N`` (stage 1) and
    ``training.iterations`` to the stage's last step, so ``plan_stages`` plans the stage and the
    configuration stored in the checkpoints describes the run.

    Args:
        sections: mapping with the sections ``data``, ``preprocessing``, ``model`` and
            ``training`` of :class:`RunConfig`; ``training.iterations`` and
            ``training.stage1_iterations`` are replaced.
        stage: 1 (base network, one rater) or 2 (calibration and pseudo-style raters).
        iterations: optimiser steps of this run.
        output_dir: folder of the preprocessing cache and the run's outputs.
        stage1_checkpoint: checkpoint written by stage 1 (stage 2 only).
        num_processes: processes that each draw one episode per optimiser step; None reads the
            process group (1 without one).
        device: this process's training device, stored as ``training.device``; None keeps the
            sections' value.
        amp: bfloat16 autocast on CUDA, stored as ``training.amp``; None keeps the sections' value.

    Raises:
        ConfigError: invalid stage or budget, a missing stage-1 checkpoint, or stage-2 network and
            preprocessing settings that differ from stage 1.
        CheckpointError: an unreadable stage-1 checkpoint.
    """
    from japc.pipeline.ddp import world_size

    if stage not in (1, 2):
        raise ConfigError(f"--stage must be 1 or 2, got {stage!r}.")
    if int(iterations) < 1:
        raise ConfigError(f"--iterations must be at least 1, got {iterations!r}.")
    processes = world_size() if num_processes is None else int(num_processes)
    episodes = int(iterations) * processes
    content = _sections(sections, output_dir)
    training = content.setdefault("training", {})
    if device is not None:
        training["device"] = str(device)
    if amp is not None:
        training["amp"] = bool(amp)
    if stage == 1:
        training["iterations"] = episodes
        training["stage1_iterations"] = episodes
        return config_from_dict(content, source="the bundle configuration")

    if content.get("model", {}).get("calibration") == "none":
        raise ConfigError(
            "Stage 2 trains the calibration module, but japc#model#calibration is 'none'. "
            "The base network trains in stage 1 only."
        )
    state = _stage1_state(stage1_checkpoint)
    stage1_config = config_from_dict(state["config"], source=f"checkpoint {stage1_checkpoint}", ignore_unknown=True)
    _check_same_network(content, stage1_config, stage1_checkpoint)
    for key in _DATASET_STATISTICS:
        content.setdefault("preprocessing", {})[key] = getattr(stage1_config.preprocessing, key)
    start = int(state["step"])
    training["stage1_iterations"] = start
    training["iterations"] = start + episodes
    logger.info("Stage 2 continues from step %d of %s", start, stage1_checkpoint)
    return config_from_dict(content, source="the bundle configuration")


def checkpoint_run_config(
    checkpoint: str | Path, sections: Mapping[str, Any] | None = None, output_dir: str | Path = "."
) -> RunConfig:
    """Return the run configuration stored in a japc checkpoint.

    A bare state dict carries no configuration, so the bundle's ``japc`` sections describe the
    network and the preprocessing instead (they must then match the weights).

    Raises:
        CheckpointError: unreadable checkpoint, or a bare state dict without ``sections``.
    """
    state = load_checkpoint_state(checkpoint)
    if "config" in state:
        try:
            return config_from_dict(state["config"], source=f"checkpoint {checkpoint}", ignore_unknown=True)
        except ConfigError as error:
            raise CheckpointError(f"Checkpoint {checkpoint} contains an invalid configuration: {error}") from error
    if sections is None:
        raise CheckpointError(
            f"{checkpoint} is a bare state dict without a japc configuration; give the japc sections that describe it."
        )
    logger.info("%s contains no japc configuration; using the bundle's japc sections", checkpoint)
    content = _sections(sections, output_dir)
    content.setdefault("training", {}).pop("stage1_iterations", None)
    return config_from_dict(content, source="the bundle configuration")


def build_network(config: RunConfig, checkpoint: str | Path | None = None) -> FewShotSegmenter:
    """Build the segmenter that ``config`` describes, for evaluation or inference.

    The weights are loaded afterwards (by MONAI's ``CheckpointLoader``). A japc checkpoint also
    records whether its calibration module was trained; a stage-1 checkpoint, for example,
    predicts without calibration. That flag is read here from ``checkpoint``.
    """
    network = build_segmenter(config.model, pretrained=False)
    if checkpoint is not None:
        state = load_checkpoint_state(checkpoint)
        if "calibration_enabled" in state:
            network.calibration_enabled = bool(state["calibration_enabled"])
    network.eval()
    return network
