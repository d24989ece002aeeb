"""Retry loops: stamina (typed, on tenacity) with a deadline, as every waiting loop here uses it.

    for attempt in retry.until(on=DatabaseLocked, timeout_s=60, first_s=0.005, max_s=0.2):
        with attempt:
            return connect()

`on` is an exception class (or tuple) or a predicate on the exception; anything else propagates at
once. A predicate may return a number instead of True: the seconds to wait before the next attempt
(a provider's Retry-After). In async code, `async for attempt in retry.until_async(...)`.
Waits grow from `first_s` by `factor` up to `max_s`, plus up to `jitter_s` at random; no
attempt starts once `timeout_s` has passed, and the last exception propagates. The dispatcher keeps
its own limiter (refunds, limits learned from headers) and does not use this.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import stamina

On = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool | float]


@functools.cache
def _stamina() -> Any:
    """stamina, imported on first use (with tenacity it costs ~0.1 s of start-up) and configured once."""
    import stamina
    import stamina.instrumentation

    # stamina reports each scheduled retry through structlog when it is importable (Dagster brings it),
    # and structlog's default configuration prints to stdout: that would corrupt `--json` output. So
    # retries go to the standard `stamina` logger at WARNING, which prints nothing unless the
    # application configures logging (the NullHandler keeps Python's last-resort handler off stderr).
    stamina.instrumentation.set_on_retry_hooks([stamina.instrumentation.LoggingOnRetryHook])
    logging.getLogger("stamina").addHandler(logging.NullHandler())
    return stamina


def until(
    *, on: On, timeout_s: float, first_s: float, max_s: float, factor: float = 2.0, jitter_s: float = 0.0
) -> Iterable[stamina.Attempt]:
    """Attempts (context managers) retried on `on` until `timeout_s` has passed."""
    attempts: Iterable[stamina.Attempt] = _stamina().retry_context(
        on=on, attempts=None, timeout=timeout_s, wait_initial=first_s, wait_max=max_s, wait_exp_base=factor,
        wait_jitter=jitter_s,
    )  # fmt: skip
    return attempts


def until_async(
    *, on: On, timeout_s: float, first_s: float, max_s: float, factor: float = 2.0, jitter_s: float = 0.0
) -> AsyncIterable[stamina.Attempt]:
    """`until` for `async for`: the waits are `asyncio.sleep`, so the event loop keeps running."""
    attempts: AsyncIterable[stamina.Attempt] = _stamina().retry_context(
        on=on, attempts=None, timeout=timeout_s, wait_initial=first_s, wait_max=max_s, wait_exp_base=factor,
        wait_jitter=jitter_s,
    )  # fmt: skip
    return attempts
