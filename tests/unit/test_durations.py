"""Durations written by people: what `core.durations` reads, and what it refuses saying what is expected."""

from __future__ import annotations

import math

import pytest

from batchrouter.core.durations import ASAP, DurationError, format_duration, parse_deadline, parse_duration
from batchrouter.core.errors import InvalidRequest


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("24h", 86_400.0),  # OpenAI's completion_window
        ("4h", 14_400.0),
        ("30m", 1_800.0),
        ("90s", 90.0),
        ("1d", 86_400.0),
        ("1h30m", 5_400.0),
        ("1.5h", 5_400.0),
        (" 2 H ", 7_200.0),
        ("1d2h3m4s", 93_784.0),
        ("3600", 3_600.0),
        ("0.5", 0.5),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_durations_with_units_and_plain_seconds_are_read(written: object, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize(
    "written",
    ["", "h", "24 hours", "1w", "-1h", "+1h", "nan", "inf", "1e3", "30m1h", "1h1h", "1,5h", "PT24H", True, None,
     [1], -5, math.nan, math.inf],
)  # fmt: skip
def test_anything_else_is_refused_naming_the_value_and_what_is_expected(written: object) -> None:
    with pytest.raises(DurationError) as refused:
        parse_duration(written, field="lanes.default_deadline")
    message = str(refused.value)
    assert message.startswith(f"lanes.default_deadline {written!r} is not a duration")
    assert "24h" in message and "seconds" in message


def test_zero_and_over_a_year_are_refused_unless_zero_is_allowed() -> None:
    with pytest.raises(DurationError, match="longer than zero"):
        parse_duration("0s")
    assert parse_duration("0s", allow_zero=True) == 0.0
    assert parse_duration("366d") == 366 * 86_400.0
    with pytest.raises(DurationError, match="maximum of 366d"):
        parse_duration("367d")


def test_a_duration_error_is_an_invalid_request_and_a_value_error() -> None:
    error = DurationError("x")
    assert isinstance(error, InvalidRequest) and isinstance(error, ValueError)
    assert (error.code, error.http_status) == ("invalid_duration", 422)


@pytest.mark.parametrize("seconds", [1.0, 90.0, 90.5, 3_600.0, 5_400.0, 86_400.0, 93_784.0, 366 * 86_400.0])
def test_formatted_durations_read_back_the_same(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_formatting_writes_the_largest_units_first_and_infinity_as_unbounded() -> None:
    written = [format_duration(s) for s in (0.0, 90.0, 5_400.0, 86_400.0, math.inf)]
    assert written == ["0s", "1m30s", "1h30m", "1d", "unbounded"]


def test_a_deadline_is_a_duration_or_asap_and_zero_means_asap() -> None:
    assert parse_deadline("4h") == 4 * 3600 and parse_deadline(90) == 90
    assert parse_deadline("asap") == parse_deadline(" ASAP ") == parse_deadline(0) == parse_deadline("0s") == ASAP
    with pytest.raises(DurationError, match="deadline 'soon' is not a duration"):
        parse_deadline("soon")
