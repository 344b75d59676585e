"""Exceptions raised by japc for invalid user input, data, configuration or checkpoints.

Every message names the file, the case and the offending value, and states what to do, so
that the command line can print it without a traceback.
"""

from __future__ import annotations

__all__ = ["JapcError", "DatalistError", "InputImageError", "ConfigError", "CheckpointError", "find_japc_error"]


class JapcError(Exception):
    """Base class of the errors that the ``japc`` command prints as a one-line message."""


class DatalistError(JapcError, ValueError):
    """Invalid multi-rater datalist or case: missing file, geometry mismatch, unknown label value."""


class InputImageError(JapcError, ValueError):
    """Invalid image or mask given for training, evaluation or inference."""


class ConfigError(JapcError, ValueError):
    """Invalid or inconsistent configuration value."""


class CheckpointError(JapcError, RuntimeError):
    """Missing, corrupt or incompatible checkpoint file."""


def find_japc_error(error: BaseException) -> JapcError | None:
    """Return the :class:`JapcError` that caused ``error``, if any.

    MONAI's ``Compose`` re-raises a failing transform's exception as ``RuntimeError`` with the
    original as its cause, so the command line walks the chain to print the original message.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, JapcError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
