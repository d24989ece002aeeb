"""Who runs a batch the API created: a thread of this server ("inline") or the Dagster sensor ("sensor").

Inline, `engine.batches.advance(batch_id)` runs in a background thread of the server process, with
the server's own settings; the sensor executor hands the batch to Dagster's manifest sensor
(`engine.batches.hand_off` says which in the batch's status).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Literal

from batchrouter.batches.results import BatchView

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

log = logging.getLogger("batchrouter.api")


class Executor:
    def __init__(self, engine: BatchRouter, mode: Literal["inline", "sensor"]) -> None:
        self.engine, self.mode = engine, mode
        self.runs: list[threading.Thread] = []

    def start(self, batch_id: str) -> BatchView:
        """Hand a newly reserved batch to the executor; returns its status as it then is."""
        view = self.engine.batches.hand_off(batch_id, to=self.mode)
        if self.mode == "inline":
            run = threading.Thread(target=self._advance, args=(batch_id,), name=f"advance-{batch_id}", daemon=True)
            self.runs = [r for r in self.runs if r.is_alive()] + [run]
            run.start()
        return view

    def wait(self, timeout_s: float) -> None:
        """Let the background runs finish (the server is stopping); a run cut short is safe to advance again."""
        deadline = time.monotonic() + timeout_s
        for run in self.runs:
            run.join(max(0.0, deadline - time.monotonic()))

    def _advance(self, batch_id: str) -> None:
        try:
            self.engine.batches.advance(batch_id)
        except Exception:  # a thread has nobody to answer: the log and the batch's status say what happened
            log.exception("background run of batch %s failed; the sweeper will release its reservation", batch_id)
