"""JSON as sent to and read from providers: compact UTF-8, by orjson.

The online lane encodes a body and decodes an answer for every request, at up to a thousand a second
on one core; orjson does each in a fraction of the standard library's time. What orjson refuses
(integers beyond 64 bits, keys that are not strings; `NaN` on reading) goes through the standard
library, so every value json accepted is still accepted, and written the same compact way; so does
reading a text where orjson would round a long integer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile(rb"\d{19}")
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, no escaping of non-ASCII)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def dumps_text(value: Any) -> str:
    return dumps(value).decode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; invalid input raises `ValueError` (`json.JSONDecodeError`), as `json.loads` does.

    orjson reads an integer beyond 64 bits as a float, losing digits (a tool call's argument, say): a text
    with a run of 19 digits or more is read by the standard library, which keeps every integer exact.
    """
    long_integer = _LONG_DIGITS.search(data) if isinstance(data, bytes) else _LONG_DIGITS_TEXT.search(data)
    if long_integer is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN and Infinity, which json reads; or not JSON, which json reports in its own words
    return json.loads(data)
