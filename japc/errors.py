"""Exceptions raised by japc for invalid user input, data, configuration or checkpoints.

Every message names the file, the case and the offending value, and says what to do, so that
the command line can print it without a traceback.
"""

from __future__ import annotations

__all__ = ["JapcError", "DatalistError", "InputImageError", "ConfigError", "CheckpointError"]


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
