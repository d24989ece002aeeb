"""The API's inline executor runs again a batch whose run raised, from its checkpoint, until a run ends.

Before, the run's thread logged the error and nothing ran the batch again: it stayed dispatching
with its lines answered and nothing settled (the lease was released, so it was not "interrupted").
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from batchrouter.api import executor as executor_module
from batchrouter.api.executor import Executor


class FlakyBatches:
    """`advance` raises for its first `failures` calls, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0
        self.lock = threading.Lock()

    def advance(self, batch_id: str) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise OSError(f"run {self.calls} of {batch_id} met a transient error")

    def interrupted(self) -> list[str]:
        return []

    def waiting_due(self) -> list[str]:
        return []


def test_a_run_that_raised_is_run_again_until_one_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor_module, "RETRY_FIRST_S", 0.01)
    batches = FlakyBatches(failures=2)
    engine: Any = SimpleNamespace(batches=batches)
    runner = Executor(engine, "inline")
    runner.start_polling(every_s=0.02)
    try:
        runner._run("acme-1")
        deadline = time.monotonic() + 60
        while batches.calls < 3 or runner.failed or any(r.is_alive() for r in runner.runs):
            assert time.monotonic() < deadline, f"calls {batches.calls}, failed {runner.failed}"
            time.sleep(0.02)  # the loop's pace; the deadline above bounds it
    finally:
        runner.wait(timeout_s=10)
    assert batches.calls == 3  # two that raised, one that ended; none after it
    assert runner.failed == {}


def test_the_wait_before_running_again_doubles_up_to_its_cap() -> None:
    batches = FlakyBatches(failures=10)
    engine: Any = SimpleNamespace(batches=batches)
    runner = Executor(engine, "inline")  # no poller: each failure only sets when to run again
    waits = []
    for _ in range(9):
        before = time.monotonic()
        runner._advance("acme-2")
        times, at = runner.failed["acme-2"]
        waits.append(round(at - before))
    assert times == 9
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]
