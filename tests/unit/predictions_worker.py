"""The worker of the two-process recording race (test_predictions), importable by spawned processes."""

from __future__ import annotations

import os
from typing import Any


def record_many(path: str, worker: int, runs: int, barrier: Any, results: Any) -> None:
    """Wait for the other worker, then record `runs` runs of its own and the same `runs` shared ones."""
    outcome: dict[str, Any] = {"worker": worker, "pid": os.getpid(), "new": 0, "errors": []}
    try:
        from batchrouter.pricing.predictions import Predictions

        predictions = Predictions(path)
        barrier.wait(timeout=60)
        for run in range(runs):
            for key in (f"w{worker}-{run}", f"shared-{run}"):
                outcome["new"] += predictions.record("openai", "batch", 10, 60.0 + run, "completed", key=key)
    except Exception as exc:  # anything else (a lock error, a lost answer) fails the test
        outcome["errors"].append(f"{type(exc).__name__}: {exc}")
    results.put(outcome)
