"""The MONAI Label app's --conf options and request parameters (no monailabel needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from japc.errors import ConfigError
from japc.label.settings import CONSENSUS, LabelSettings, parse_rater, parse_threshold

RATERS = ["rater-0", "rater-1", "rater-2"]
FULL_CONF = {
    "checkpoint": "runs/final.pt",
    "datalist": "/data/datalist.json",
    "support_case": " case01 ",
    "label_value": "2",
    "device": "cpu",
    "threshold": "0.3",
    "batch_size": "4",
}


def test_settings_from_full_conf() -> None:
    settings = LabelSettings.from_conf(FULL_CONF)
    assert settings.checkpoint == Path.cwd() / "runs" / "final.pt"
    assert settings.datalist == Path("/data/datalist.json")
    assert settings.support_case == "case01"
    assert settings.label_value == 2
    assert settings.device == "cpu"
    assert settings.threshold == pytest.approx(0.3)
    assert settings.batch_size == 4


def test_settings_defaults() -> None:
    settings = LabelSettings.from_conf({"checkpoint": "a.pt", "datalist": "d.json", "support_case": "c"})
    assert settings.label_value is None
    assert settings.device == "auto"
    assert settings.threshold == 0.5
    assert settings.batch_size == 16


@pytest.mark.parametrize("missing", ["checkpoint", "datalist", "support_case"])
def test_settings_missing_key_named(missing: str) -> None:
    conf = {key: value for key, value in FULL_CONF.items() if key != missing}
    with pytest.raises(ConfigError) as raised:
        LabelSettings.from_conf(conf)
    assert f"no {missing} option" in str(raised.value)
    assert "--conf checkpoint" in str(raised.value)


def test_settings_empty_conf_names_all_keys() -> None:
    with pytest.raises(ConfigError, match="checkpoint, datalist, support_case"):
        LabelSettings.from_conf({})


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("label_value", "one", "label_value must be an integer"),
        ("label_value", "0", "label_value must be at least 1"),
        ("batch_size", "0", "batch_size must be at least 1"),
        ("threshold", "1.0", "between 0 and 1"),
        ("threshold", "nan", "between 0 and 1"),
    ],
)
def test_settings_invalid_numbers(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        LabelSettings.from_conf(dict(FULL_CONF, **{key: value}))
    assert fragment in str(raised.value)
    assert repr(value) in str(raised.value) or value in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, CONSENSUS),
        ("", CONSENSUS),
        ("consensus", CONSENSUS),
        ("rater-1", "rater-1"),
        ([CONSENSUS, "rater-0"], CONSENSUS),
        (["rater-2", "rater-0"], "rater-2"),
        ([], CONSENSUS),
    ],
)
def test_parse_rater_choices(value: object, expected: str) -> None:
    assert parse_rater(value, RATERS) == expected


def test_parse_rater_unknown_lists_choices() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_rater("rater-9", RATERS)
    message = str(raised.value)
    assert "'rater-9'" in message
    assert "consensus, rater-0, rater-1, rater-2" in message


def test_parse_rater_rejects_number() -> None:
    with pytest.raises(ConfigError, match="must be a rater id"):
        parse_rater(1, RATERS)


@pytest.mark.parametrize(("value", "expected"), [(None, 0.4), ("", 0.4), (0.25, 0.25), ("0.75", 0.75)])
def test_parse_threshold_values(value: object, expected: float) -> None:
    assert parse_threshold(value, default=0.4) == pytest.approx(expected)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "high", True, [0.5], float("inf")])
def test_parse_threshold_rejects(value: object) -> None:
    with pytest.raises(ConfigError, match="'threshold' must be a number between 0 and 1"):
        parse_threshold(value, default=0.5)
