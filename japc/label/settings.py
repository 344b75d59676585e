"""Settings of the MONAI Label app: the server's ``--conf`` options and the per-request parameters.

``monailabel start_server`` passes every ``--conf KEY VALUE`` pair to the app as strings:

- ``checkpoint`` (required): a japc checkpoint file, e.g. ``runs/lidc/checkpoints/final.pt``.
- ``datalist`` (required): the multi-rater datalist JSON that lists the support case.
- ``support_case`` (required): id of the support case in that datalist. Its image and its R rater
  masks form the support set, and its raters are the raters a request can choose.
- ``label_value``: label value of the class in the support masks. It may be left out when the
  datalist declares a single class.
- ``device``: ``auto`` (default: CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
- ``threshold``: default foreground probability threshold, between 0 and 1 exclusive (0.5).
- ``batch_size``: slices per encoder batch (16). Lower it when a large query runs out of memory.

Relative paths are resolved against the server's working directory.

A request chooses ``rater`` (a rater id of the support set, or ``consensus``: the mean of the R
rater probabilities, the default) and ``threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from japc.errors import ConfigError

__all__ = ["CONSENSUS", "CONF_KEYS", "LabelSettings", "parse_rater", "parse_threshold"]

CONSENSUS = "consensus"
"""Request value of ``rater`` that selects the mean of all rater probabilities."""

CONF_KEYS = ("checkpoint", "datalist", "support_case", "label_value", "device", "threshold", "batch_size")
"""``--conf`` keys that the app reads. MONAI Label adds others of its own, which are ignored."""

_REQUIRED_KEYS = ("checkpoint", "datalist", "support_case")
_EXAMPLE = "--conf checkpoint runs/lidc/checkpoints/final.pt --conf datalist data/lidc/datalist.json --conf support_case CASE_ID"


@dataclass(frozen=True)
class LabelSettings:
    """Server-side configuration of the japc infer task.

    Attributes:
        checkpoint: japc checkpoint file (absolute).
        datalist: multi-rater datalist JSON (absolute).
        support_case: case id of the support image and its rater masks in the datalist.
        label_value: class value in the support masks; None selects the datalist's only class.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threshold: default foreground probability threshold, ``0 < threshold < 1``.
        batch_size: slices per encoder batch.
    """

    checkpoint: Path
    datalist: Path
    support_case: str
    label_value: int | None = None
    device: str = "auto"
    threshold: float = 0.5
    batch_size: int = 16

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> LabelSettings:
        """Read the settings from MONAI Label's ``--conf`` mapping.

        Raises:
            ConfigError: a required key is missing or empty, or a value is not a valid number.
        """
        missing = [key for key in _REQUIRED_KEYS if not str(conf.get(key, "")).strip()]
        if missing:
            raise ConfigError(
                f"The japc MONAI Label app has no {', '.join(missing)} option. Start the server with {_EXAMPLE}."
            )
        label_value = conf.get("label_value")
        return cls(
            checkpoint=Path(str(conf["checkpoint"])).expanduser().absolute(),
            datalist=Path(str(conf["datalist"])).expanduser().absolute(),
            support_case=str(conf["support_case"]).strip(),
            label_value=None if label_value in (None, "") else _parse_int("label_value", label_value, minimum=1),
            device=str(conf.get("device", "auto")).strip() or "auto",
            threshold=_parse_fraction("--conf threshold", conf.get("threshold", 0.5)),
            batch_size=_parse_int("batch_size", conf.get("batch_size", 16), minimum=1),
        )


def parse_rater(value: object, raters: Sequence[str]) -> str:
    """Return the rater id that a request selects: one of ``raters`` or :data:`CONSENSUS`.

    MONAI Label fills a parameter that the request leaves out from the task's configuration, where
    ``rater`` is the list of choices shown to the annotator (consensus first). A list therefore
    selects its first item.

    Raises:
        ConfigError: the value is not a string, or names no rater of the support set.
    """
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None or value == "":
        return CONSENSUS
    if not isinstance(value, str):
        raise ConfigError(f"Request parameter 'rater' must be a rater id (text), got {value!r}.")
    if value == CONSENSUS or value in raters:
        return value
    raise ConfigError(
        f"Unknown rater {value!r} in the request. Choose one of: {', '.join([CONSENSUS, *raters])}."
    )


def parse_threshold(value: object, default: float) -> float:
    """Return the foreground probability threshold of a request (``default`` when absent).

    Raises:
        ConfigError: the value is not a number strictly between 0 and 1.
    """
    if value is None or value == "":
        return default
    return _parse_fraction("Request parameter 'threshold'", value)


def _parse_fraction(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}.")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}.") from error
    if not (math.isfinite(number) and 0.0 < number < 1.0):
        raise ConfigError(f"{name} must be a number between 0 and 1 (exclusive), got {value!r}.")
    return number


def _parse_int(key: str, value: object, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError as error:
        raise ConfigError(f"--conf {key} must be an integer, got {value!r}.") from error
    if number < minimum:
        raise ConfigError(f"--conf {key} must be at least {minimum}, got {number}.")
    return number
