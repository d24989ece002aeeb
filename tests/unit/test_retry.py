"""Retry loops on stamina: what is retried, until when, and that retrying prints nothing."""

from __future__ import annotations

import pytest

from batchrouter.core import retry


class Locked(Exception):
    pass


def flaky(failures: int, exc: type[Exception] = Locked) -> tuple[list[int], int]:
    calls: list[int] = []
    for attempt in retry.until(on=Locked, timeout_s=30, first_s=0.001, max_s=0.002):
        with attempt:
            calls.append(len(calls))
            if len(calls) <= failures:
                raise exc("held")
            return calls, len(calls)
    raise AssertionError("unreachable")


def test_a_matching_error_is_retried_until_the_block_succeeds(capfd: pytest.CaptureFixture[str]) -> None:
    assert flaky(3)[1] == 4
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # no retry log on stdout (structlog) or stderr (last-resort handler)


def test_another_error_propagates_at_once() -> None:
    with pytest.raises(ValueError):
        flaky(1, ValueError)


def test_a_predicate_decides_and_the_last_error_propagates_after_the_deadline() -> None:
    seen: list[str] = []
    with pytest.raises(Locked, match="busy"):
        for attempt in retry.until(on=lambda exc: "busy" in str(exc), timeout_s=0.05, first_s=0.001, max_s=0.005):
            with attempt:
                seen.append("try")
                raise Locked("busy")
    assert len(seen) > 1  # retried, then gave up at the deadline with the last error
