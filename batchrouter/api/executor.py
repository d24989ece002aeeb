"""Who runs a batch the API created: a thread of this server ("inline") or the Dagster sensor ("sensor").

Inline, `engine.batches.advance(batch_id)` runs in a background thread of the server process, with
the server's own settings; the sensor executor hands the batch to Dagster's manifest sensor
(`engine.batches.hand_off` says which in the batch's status). Inline, a batch left waiting on its
providers' batches is advanced again by the server's poller (`poll`), as the provider-batch sensor
does under Dagster: whenever `engine.batches.waiting_due()` lists it, including after a restart.
A batch whose run died with the server (killed mid-dispatch) is started again by the poller when
the server is back (`engine.batches.interrupted()`), in a thread of its own: it goes on from its
checkpoint, sending only the lines nobody recorded an answer for. So does a run that raised (its
answers are kept, its settlement not yet done): the poller runs it again after `RETRY_FIRST_S`,
doubling the wait up to `RETRY_MAX_S`, until a run of it ends.
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
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0


class Executor:
    def __init__(self, engine: BatchRouter, mode: Literal["inline", "sensor"]) -> None:
        self.engine, self.mode = engine, mode
        self.runs: list[threading.Thread] = []
        self._runs_lock = threading.Lock()  # requests start runs, and so does the poller
        self.stopping = threading.Event()
        self.poller: threading.Thread | None = None
        # Batches whose last run here raised: (runs that raised in a row, when to run it again).
        self.failed: dict[str, tuple[int, float]] = {}

    def start_polling(self, every_s: float = 5.0) -> None:
        """Inline: advance batches waiting on provider batches when due, and those whose run died (a thread)."""
        if self.mode != "inline" or self.poller is not None:
            return
        self.poller = threading.Thread(target=self._poll, args=(every_s,), name="provider-batches", daemon=True)
        self.poller.start()

    def _poll(self, every_s: float) -> None:
        self._resume()  # at once: a restart goes on with what the last server left half done
        while not self.stopping.wait(every_s):
            self._resume()
            self._retry_failed()
            try:
                due = self.engine.batches.waiting_due()
            except Exception:  # noqa: BLE001 - the poller must outlive one bad look; the log says what it was
                log.exception("looking at batches waiting on providers failed; trying again in %s s", every_s)
                continue
            for batch_id in due:
                self._advance(batch_id)

    def _resume(self) -> None:
        """Run again, each in a thread, the batches whose run died before they were done."""
        try:
            cut_short = self.engine.batches.interrupted()
        except Exception:  # noqa: BLE001 - the poller must outlive one bad look; the log says what it was
            log.exception("looking for batches whose run died failed; trying again at the next poll")
            return
        for batch_id in cut_short:
            if self._run(batch_id, unless_running=True):
                log.info("batch %s: its run died before it was done; running it again from its checkpoint", batch_id)

    def _retry_failed(self) -> None:
        """Run again the batches whose run raised, once their wait is over."""
        now = time.monotonic()
        with self._runs_lock:
            due = [batch_id for batch_id, (_, at) in self.failed.items() if at <= now]
        for batch_id in due:
            if self._run(batch_id, unless_running=True):
                log.info("batch %s: running it again after its run failed", batch_id)

    def start(self, batch_id: str) -> BatchView:
        """Hand a newly reserved batch to the executor; returns its status as it then is."""
        view = self.engine.batches.hand_off(batch_id, to=self.mode)
        if self.mode == "inline":
            self._run(batch_id)
        return view

    def _run(self, batch_id: str, *, unless_running: bool = False) -> bool:
        """Advance the batch in a thread of its own; False when `unless_running` and this server runs it now."""
        name = f"advance-{batch_id}"
        with self._runs_lock:
            self.runs = [r for r in self.runs if r.is_alive()]
            if unless_running and any(r.name == name for r in self.runs):
                return False
            run = threading.Thread(target=self._advance, args=(batch_id,), name=name, daemon=True)
            self.runs.append(run)
            run.start()
        return True

    def wait(self, timeout_s: float) -> None:
        """Let the background runs finish (the server is stopping); a run cut short is safe to advance again."""
        deadline = time.monotonic() + timeout_s
        self.stopping.set()
        for run in [*self.runs, *([self.poller] if self.poller else [])]:
            run.join(max(0.0, deadline - time.monotonic()))

    def _advance(self, batch_id: str) -> None:
        try:
            self.engine.batches.advance(batch_id)
        except Exception:  # a thread has nobody to answer: the log says what happened, the poller tries again
            with self._runs_lock:
                times = self.failed.get(batch_id, (0, 0.0))[0] + 1
                wait_s = min(RETRY_FIRST_S * 2 ** (times - 1), RETRY_MAX_S)
                self.failed[batch_id] = (times, time.monotonic() + wait_s)
            log.exception("background run of batch %s failed (%d in a row); running it again in %g s from its "
                          "checkpoint", batch_id, times, wait_s)  # fmt: skip
        else:
            with self._runs_lock:
                self.failed.pop(batch_id, None)
