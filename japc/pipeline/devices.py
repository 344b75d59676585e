"""Device selection and mixed precision for training, evaluation and inference."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from japc.errors import ConfigError

__all__ = ["resolve_device", "model_device", "autocast"]

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` to a device.

    Raises:
        ConfigError: an unknown name, or CUDA requested on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {name!r} was requested but CUDA is not available here; use auto or cpu.")
    return device


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when ``enabled``; a no-op context on the CPU or when disabled."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
