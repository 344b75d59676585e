"""Checkpoint files: atomic saving, safe loading, and rebuilding the model they describe.

A checkpoint is a dictionary of tensors and plain Python values (no pickled objects), so it
loads with ``torch.load(..., weights_only=True)``: ``model``, ``optimizer`` and ``scheduler``
state dicts, ``step``, ``stage``, ``config`` (the run configuration as a mapping), ``torch_rng``
and ``format_version``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from japc.errors import CheckpointError, ConfigError
from japc.networks.factory import build_segmenter
from japc.networks.segmenter import FewShotSegmenter
from japc.pipeline.config import RunConfig, config_from_dict
from japc.pipeline.devices import resolve_device
from japc.pipeline.files import apply_default_mode

__all__ = ["CHECKPOINT_FORMAT_VERSION", "save_checkpoint", "read_checkpoint", "load_model"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` through a temporary file and a rename.

    An interrupted save leaves the previous file intact, never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state, format_version=CHECKPOINT_FORMAT_VERSION)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        apply_default_mode(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, corrupt or truncated file, a file that carries pickled
            code (rejected by the safe loader), or a file without the keys of a japc checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}. Check the path or train a model with `japc train`.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Checkpoint {path} was rejected by the safe loader (weights_only=True) because it contains "
            f"objects other than tensors and plain values ({str(error).splitlines()[0]}). japc only loads "
            "checkpoints that carry no pickled code; re-save the weights as a plain state dict."
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or truncated and cannot be read ({error}). "
            "Use another checkpoint, e.g. the previous one in the same folder."
        ) from error
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a japc checkpoint: expected keys 'model' and 'config', found {found}."
        )
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[FewShotSegmenter, RunConfig, dict[str, Any]]:
    """Rebuild the segmenter stored in a checkpoint, in evaluation mode on ``device``.

    The file is always read onto the CPU first, so checkpoints saved on a GPU load anywhere.

    Returns:
        The model, its run configuration and the raw checkpoint dictionary.
    """
    state = read_checkpoint(path)
    try:
        config = config_from_dict(state["config"], source=f"checkpoint {path}", ignore_unknown=True)
    except ConfigError as error:
        raise CheckpointError(f"Checkpoint {path} holds an invalid configuration: {error}") from error
    model = build_segmenter(config.model, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"Checkpoint {path} does not match the model its configuration describes: {str(error).splitlines()[0]}"
        ) from error
    model.calibration_enabled = bool(state.get("calibration_enabled", model.calibration_enabled))
    model.eval()
    model.to(resolve_device(device) if isinstance(device, str) else device)
    return model, config, state
