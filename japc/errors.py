"""Exceptions raised by japc for invalid user input, data, configuration or checkpoints.

Every message names the file, the case and the offending value, and states what to do, so
that the command line can print it without a traceback.
"""

from __future__ import annotations

import sys

__all__ = [
    "JapcError",
    "DatalistError",
    "InputImageError",
    "ConfigError",
    "CheckpointError",
    "find_japc_error",
    "print_error_line",
    "install_excepthook",
]


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


def print_error_line(program: str, error: BaseException | str) -> None:
    """Print ``<program>: error: <error>`` on standard error, on a line of its own.

    Progress bars that the error interrupted are closed first. The frames of the error's
    traceback keep their loops alive, so they would otherwise close after the message.
    """
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    print(f"{program}: error: {error}", file=sys.stderr)


def install_excepthook(program: str) -> None:
    """Print an uncaught error caused by a :class:`JapcError` as one line ``<program>: error: <message>``.

    Other errors keep the previous hook's traceback. The process still exits with status 1. The
    MONAI bundle installs this hook in its ``initialize`` step, because ``python -m monai.bundle``
    would otherwise print MONAI's chain of wrapped errors for every invalid input.
    """
    previous = sys.excepthook

    def print_japc_error(kind: type[BaseException], error: BaseException, traceback) -> None:
        cause = find_japc_error(error)
        if cause is None:
            previous(kind, error, traceback)
            return
        print_error_line(program, cause)

    sys.excepthook = print_japc_error
