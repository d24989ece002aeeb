"""The worker of the multi-process overdraft race (test_ledger_concurrency), importable by spawned processes.

It loads `batchrouter.money.ledger` without running `batchrouter/__init__.py`: the package's init imports the
whole engine (tokenizer tables included, over a second per process), while the ledger needs only
`ledger.py` and `errors.py`. The code under test is the same file either way.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

USD = 1_000_000


def _ledger_module() -> Any:
    if "batchrouter" not in sys.modules:
        spec = importlib.util.find_spec("batchrouter")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("batchrouter")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["batchrouter"] = package
    return importlib.import_module("batchrouter.money.ledger")


def reserve_many(path: str, worker: int, attempts: int, barrier: Any, results: Any) -> None:
    """Wait for every other worker, then try `attempts` reserves of 1 USD on distinct batch ids."""
    outcome: dict[str, Any] = {"worker": worker, "pid": os.getpid(), "reserved": [], "refused": 0, "errors": []}
    try:
        ledger_module = _ledger_module()
        ledger = ledger_module.Ledger(path)
        barrier.wait(timeout=60)
        for attempt in range(attempts):
            batch = f"w{worker}-b{attempt}"
            try:
                ledger.reserve("acme", batch, 1 * USD)
                outcome["reserved"].append(batch)
            except ledger_module.InsufficientCredits:
                outcome["refused"] += 1
    except Exception as exc:  # anything else (a lock error, a conflict that escaped) fails the test
        outcome["errors"].append(f"{type(exc).__name__}: {exc}")
    results.put(outcome)
