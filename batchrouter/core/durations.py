"""Durations written by people: the one rule every deadline and duration setting is read by.

A duration is a plain number of seconds (`90`, `1.5`, or the same as text) or numbers with units
`d`, `h`, `m`, `s`, one after another from the largest (`24h`, `4h`, `30m`, `90s`, `1d`, `1h30m`,
`1.5h`). OpenAI's `completion_window` (`"24h"`) is one of them. Anything else is refused naming the
value and what is expected: a unit we do not know (`24 hours`, `1w`), a sign, NaN, infinity, an
exponent, a unit given twice or out of order (`30m1h`), zero (unless allowed) and durations over
`MAX_S` (366 days: no deadline or wait here is longer, and a typo such as `240000h` is caught).
A deadline may also be "asap" (or zero): `ASAP`, every item online at once (`parse_deadline`).
"""

from __future__ import annotations

import math
import re

from batchrouter.core.errors import DurationError as DurationError

# A deadline of "asap" (or zero): every item online at once, whatever the workspace's default deadline.
ASAP = 0.0
UNITS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
MAX_S = 366 * 86_400.0
_NUMBER = r"[0-9]{1,12}(?:\.[0-9]{1,9})?"
_PLAIN = re.compile(_NUMBER)
_WITH_UNITS = re.compile(rf"(?:({_NUMBER})\s*d)?\s*(?:({_NUMBER})\s*h)?\s*(?:({_NUMBER})\s*m)?\s*(?:({_NUMBER})\s*s)?")
_EXPECTED = "a number with a unit s, m, h or d (such as 90s, 30m, 4h, 24h, 1d or 1h30m), or a plain number of seconds"


def parse_duration(value: object, *, field: str = "duration", allow_zero: bool = False) -> float:
    """Seconds in `value` (text or a number); DurationError naming `field` and what is expected otherwise."""
    seconds = _seconds(value)
    if seconds is None:
        raise DurationError(f"{field} {value!r} is not a duration: write {_EXPECTED}", param=field)
    if seconds == 0 and not allow_zero:
        raise DurationError(f"{field} {value!r} must be longer than zero", param=field)
    if seconds > MAX_S:
        raise DurationError(f"{field} {value!r} is longer than the maximum of {format_duration(MAX_S)}", param=field)
    return seconds


def parse_deadline(value: object, *, field: str = "deadline") -> float:
    """A deadline's seconds: a duration, or `ASAP` for "asap" or zero (no lane waits: online at once)."""
    if isinstance(value, str) and value.strip().lower() == "asap":
        return ASAP
    return parse_duration(value, field=field, allow_zero=True)


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) and number >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if _PLAIN.fullmatch(text):
        return float(text)
    found = _WITH_UNITS.fullmatch(text)
    if not text or found is None or not any(found.groups()):
        return None
    return sum(float(part) * scale for part, scale in zip(found.groups(), UNITS.values(), strict=True) if part)


def format_duration(seconds: float) -> str:
    """`seconds` as `parse_duration` reads it back (to the millisecond), largest units first: `1d`, `4h`,
    `1h30m`, `1m30.5s`. Infinity, a prediction nothing measured bounds, is `unbounded`."""
    if not math.isfinite(seconds) or seconds < 0:
        return "unbounded" if seconds == math.inf else repr(seconds)
    whole, fraction = divmod(seconds, 1.0)
    rest = int(whole)
    parts: list[str] = []
    for unit, scale in UNITS.items():
        count, rest = divmod(rest, int(scale))
        if count and not (unit == "s" and fraction):
            parts.append(f"{count}{unit}")
        elif unit == "s" and (count or fraction):
            parts.append(f"{round(count + fraction, 3):g}s")
    return "".join(parts) or "0s"
