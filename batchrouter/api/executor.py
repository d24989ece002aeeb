"""Who runs a batch the API created: a thread of this server ("inline") or the Dagster sensor ("sensor").

Inline, `engine.batches.advance(batch_id)` runs in a background thread of the server process, with
the server's own settings; the sensor executor hands the batch to Dagster's manifest sensor. Until a
run moves it on, the batch's status says where it waits; if none ever does, the sweeper releases its
hold once the status has not moved for its staleness limit.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

log = logging.getLogger("batchrouter.api")

INLINE = "handed to a run in a background thread of the API server"
SENSOR = ("waiting for the Dagster manifest sensor to start a run: it runs only while `dagster dev` or the "
          "Dagster daemon is up; if no run starts, the sweeper releases the reservation")  # fmt: skip


class Executor:
    def __init__(self, engine: Any, mode: Literal["inline", "sensor"]) -> None:
        self.engine, self.mode = engine, mode
        self.threads: list[threading.Thread] = []

    def start(self, view: Any) -> Any:
        """Hand a newly reserved batch to the executor; returns its status as it then is."""
        batch_id = view.batch_id
        if self.mode == "sensor":
            return self.engine.batches.hand_to_sensor(batch_id, message=SENSOR)
        # Said before the run starts, so this never overwrites what the run itself reports.
        waiting = self.engine.batches.note(batch_id, executor="inline", message=INLINE)
        thread = threading.Thread(target=self._advance, args=(batch_id,), name=f"advance-{batch_id}", daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()
        return waiting

    def _advance(self, batch_id: str) -> None:
        try:
            self.engine.batches.advance(batch_id)
        except Exception:  # a thread has nobody to answer: the log and the batch's status say what happened
            log.exception("background run of batch %s failed; the sweeper will release its reservation", batch_id)
