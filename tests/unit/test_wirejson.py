"""Wire JSON: orjson's speed, with every value the standard library took still taken."""

from __future__ import annotations

import json
import math

import pytest

from batchrouter.core import wirejson

BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": 'naïve café — 日本語 🙂 "quoted" \\ \n tab\t'}],
    "max_completion_tokens": 16,
    "temperature": 0.25,
    "metadata": {"a": None, "b": True, "c": [1, 2.5, -3]},
}


def test_a_body_is_compact_utf8_json_byte_for_byte_as_the_standard_library_writes_it() -> None:
    data = wirejson.dumps(BODY)
    assert data == json.dumps(BODY, ensure_ascii=False, separators=(",", ":")).encode()
    assert "日本語".encode() in data and wirejson.loads(data) == BODY and wirejson.dumps_text(BODY) == data.decode()


def test_what_orjson_refuses_to_write_goes_through_the_standard_library() -> None:
    huge = {"seed": 2**70, "n": -(2**65)}
    assert wirejson.loads(wirejson.dumps(huge)) == huge
    assert wirejson.dumps({1: "a", 2: "b"}) == b'{"1":"a","2":"b"}'


def test_what_orjson_refuses_to_read_the_standard_library_reads_and_bad_json_is_a_value_error() -> None:
    big = 123456789012345678901234567890
    text = f'{{"big": {big}}}'
    assert wirejson.loads(text.encode()) == {"big": big} and wirejson.loads(text) == {"big": big}
    assert wirejson.loads(b'{"id": 9223372036854775807, "f": 0.5}') == {"id": 2**63 - 1, "f": 0.5}
    assert math.isnan(wirejson.loads(b'{"x": NaN}')["x"])
    for bad in (b'{"cut": ', b"<html>oops", b""):
        with pytest.raises(ValueError):
            wirejson.loads(bad)
