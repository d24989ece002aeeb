"""Who runs a batch the API created: a thread of this server ("inline") or the Dagster sensor ("sensor").

Inline, `engine.batches.advance(batch_id)` runs in a background thread of the server process, with
the server's own settings; the sensor executor hands the batch to Dagster's manifest sensor. Until a
run moves it on, the batch's status says where it waits; if none ever does, the sweeper releases its
hold once the status has not moved for its staleness limit.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Literal

from batchrouter.batches.lifecycle import current_state, record_state
from batchrouter.batches.results import BatchView
from batchrouter.core.batch_info import BatchInfo
from batchrouter.intake import drops

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

log = logging.getLogger("batchrouter.api")

INLINE = "handed to a run in a background thread of the API server"
SENSOR = ("waiting for the Dagster manifest sensor to start a run: it runs only while `dagster dev` or the "
          "Dagster daemon is up; if no run starts, the sweeper releases the reservation")  # fmt: skip


class Executor:
    def __init__(self, engine: BatchRouter, mode: Literal["inline", "sensor"]) -> None:
        self.engine, self.mode = engine, mode
        self.runs: list[threading.Thread] = []

    def start(self, batch_id: str) -> BatchView:
        """Hand a newly reserved batch to the executor; returns its status as it then is."""
        info = self.engine.batches.info(batch_id)
        # Said before the run starts, so it never overwrites what the run says; answered as it was then.
        self._waiting(info, SENSOR if self.mode == "sensor" else INLINE)
        view = self.engine.batches.status(batch_id)
        if self.mode == "sensor":
            data = self.engine.storage.read_bytes(*info.folder("source", info.source_name))
            self.engine.storage.write_bytes(data, "manifests", info.workspace, drops.dropped_name(info))
        else:
            run = threading.Thread(target=self._advance, args=(batch_id,), name=f"advance-{batch_id}", daemon=True)
            self.runs = [r for r in self.runs if r.is_alive()] + [run]
            run.start()
        return view

    def wait(self, timeout_s: float) -> None:
        """Let the background runs finish (the server is stopping); a run cut short is safe to advance again."""
        deadline = time.monotonic() + timeout_s
        for run in self.runs:
            run.join(max(0.0, deadline - time.monotonic()))

    def _waiting(self, info: BatchInfo, message: str) -> None:
        """Say in the batch's status who is to run it, until a run moves it on."""
        storage = self.engine.storage
        current = storage.read_json(*info.folder("status.json"))
        details = {k: v for k, v in current.items() if k not in ("batch_id", "workspace", "status", "at", "message")}
        record_state(storage, info, current_state(storage, info), None, "api", **details, executor=self.mode,
                     message=message)  # fmt: skip

    def _advance(self, batch_id: str) -> None:
        try:
            self.engine.batches.advance(batch_id)
        except Exception:  # a thread has nobody to answer: the log and the batch's status say what happened
            log.exception("background run of batch %s failed; the sweeper will release its reservation", batch_id)
