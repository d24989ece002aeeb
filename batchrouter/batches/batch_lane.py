"""The batch lane: a batch's items sent through the providers' own Batch APIs, and brought back.

A run submits the lane's items as provider batches (`execution.provider_batches`, planned to fit the
provider's limits) and records each one under `batches/<id>/provider_batches/<key>.json` with its
lines (`<key>.parquet`: `custom_id` -> `item_id`); the batch then waits on its providers
(`waiting_on_provider`) and the run ends: nothing waits hours in a process.

Each later advance (the provider-batch sensor, `batchrouter run` again) polls the provider batches
still in flight and:
- collects every line of a batch that ended into the checkpoint; the first answer an item gets is
  the one kept (`Checkpoint.load`), so an item is charged once whichever lane answered it;
- hands back for the online lane the lines that came back without an answer (expired, cancelled, a
  retryable error, a batch the provider refused or no longer knows): expiry is partial success;
- hedges: once the batch's clock passes a provider batch's `hedge_at_s` (the last moment its items
  can still be sent online before the deadline), it is cancelled and its unanswered lines go online.
  A line answered before that is never sent again.
- resubmits: a provider batch far behind the runs measured (stuck, most often), while a fresh one
  would still be done before the hedge (`Predictions.resubmit_gain`, `lanes.resubmit_min_gain`), is
  cancelled early and its unanswered lines go in a fresh provider batch (the next `generation`), at the
  batch price; at most `lanes.max_resubmits` times, after which the hedge above is what is left.
  One whose answered count rose and then stopped, or still validating long after it was sent
  (`stalled`: no runs measured needed, so a new deployment's first stuck batch too), is resubmitted the
  same way while a fresh one is predicted done before the hedge. Every look records the count
  (`provider_batches/progress/<key>.json`).

A line answered by a provider batch is priced at the batch discount (`CatalogEntry.cost_pico`,
tier "batch"), never above the reservation, which is the online price. What the provider measured
for each ended batch (its own timestamps) goes to `pricing.predictions`, which the next quotes use.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from math import inf
from typing import Any, Literal

import polars as pl

from batchrouter.core.amounts import micros_up
from batchrouter.core.batch_info import BatchInfo, load_batch
from batchrouter.core.catalog import Catalog
from batchrouter.core.config import Settings
from batchrouter.core.errors import (
    BatchCapacityError,
    BatchError,
    ConfigError,
    ProviderError,
    RateLimitedError,
    RefusedError,
    ServiceUnavailable,
    StorageError,
    TerminalError,
)
from batchrouter.core.storage import Storage
from batchrouter.execution.checkpoint import ItemResult, ItemStatus, utc
from batchrouter.execution.dispatch import Job
from batchrouter.execution.provider_batches import (
    BatchClient,
    BatchLine,
    BatchStatus,
    LineResult,
    ProviderBatch,
    batch_client_for,
)
from batchrouter.pricing.lanes import Lane, hedge_lane, rate_tokens
from batchrouter.pricing.predictions import Observation, Outcome, Predictions
from batchrouter.simulator import shared as shared_simulator

FOLDER = "provider_batches"
# A provider batch's end as a prediction's observation.
_OUTCOME: dict[str, Outcome] = {"completed": "completed", "expired": "expired", "cancelled": "cancelled"}
WAITING = "waiting_on_provider"  # batches/../ markers: <batch_id> -> when the sensor next polls it
PROGRESS = "progress"  # provider_batches/progress/<key>.json: a provider batch's answered count, as looks saw it


@dataclass
class Sent:
    """One provider batch, as this batch recorded it."""

    key: str  # ours: `<batch_id>-<n>`, also the provider batch's idempotency key
    route: str
    provider: str
    lines: int
    submitted_at: float  # wall-clock unix seconds
    hedge_at_s: float | None  # on the batch's clock (seconds after it was submitted)
    provider_batch_id: str | None = None  # None: the provider refused it (its lines went online)
    status: str = "validating"
    created_at: float | None = None  # the provider's clock
    ended_at: float | None = None
    polls: int = 0
    # submitting (being sent; a run that died here sends it again) -> in_flight -> ended (collected) |
    # hedged (cancel asked: collected when it ends; its unanswered lines go online then, or at
    # `release_at_s` at the latest) | refused (never made) | lost (the provider no longer knows it)
    state: str = "in_flight"
    release_at_s: float | None = None  # on the batch's clock
    released: bool = False  # a run sent its unanswered lines online
    collected: bool = False
    error: str | None = None
    history: list[str] = field(default_factory=list)  # provider statuses seen, in order
    generation: int = 0  # how many provider batches its lines were in before this one
    resubmit: bool = False  # hedged to send its unanswered lines in a fresh provider batch, not online
    simulator: str | None = None  # the built-in simulator that holds it (`simulator.shared` key), if one does

    @property
    def open(self) -> bool:
        """Still worth polling: its answers may yet come back."""
        return self.state in ("in_flight", "hedged") and not self.collected

    def holds(self, now_s: float) -> bool:
        """Its unanswered lines wait on the provider at `now_s` (the batch's clock), not yet released online:
        in flight, or cancelled for a hedge and given until `release_at_s` to end with what it answered."""
        if self.state == "in_flight":
            return True
        return self.state == "hedged" and not self.collected and now_s < (self.release_at_s or 0.0)

    def cancel_at(self, wait_s: float) -> float | None:
        """When a hedge asks the provider to cancel: `wait_s` before the hedge time, so the cancel can end
        (and its answered lines be collected at the batch price) before the rest must go online."""
        return None if self.hedge_at_s is None else self.hedge_at_s - wait_s


@dataclass(frozen=True)
class Seen:
    """A provider batch's progress as looks saw it: lines answered, and when a look first saw that many."""

    answered: int = 0
    moved_at_s: float | None = None  # on the batch's clock; None: no look saw a line answered yet


def stalled(
    seen: Seen, *, sent_at_s: float, now_s: float, factor: float, min_s: float, validating_for_s: float | None = None
) -> bool:
    """Whether a provider batch stopped moving: still validating `validating_for_s` after it was sent (from
    `sent_at_s`; None: not validating), or its answered count rose and then stopped: it has not moved for
    `factor` times as long as it took to get there, nor for `min_s`. A count that never rose past
    validating (a provider that counts only at the end, as Anthropic does) tells nothing."""
    if validating_for_s is not None:
        return now_s - sent_at_s >= validating_for_s
    if seen.moved_at_s is None or seen.answered <= 0:
        return False
    quiet, took = now_s - seen.moved_at_s, seen.moved_at_s - sent_at_s
    return quiet >= max(factor * took, min_s)


class BatchLane:
    """The batch lane of one batch; `clock_s()` is the batch's clock (seconds since it was submitted)."""

    def __init__(
        self,
        storage: Storage,
        settings: Settings,
        catalog: Catalog,
        info: BatchInfo,
        *,
        simulator_url: str | None = None,
        record: Callable[[ItemResult], None],
        flush: Callable[[], None] = lambda: None,
    ) -> None:
        """`record` takes each line's result; `flush` makes the recorded ones durable (the checkpoint's)."""
        self.storage, self.settings, self.catalog, self.info = storage, settings, catalog, info
        self.simulator_url = simulator_url
        self.record, self.flush = record, flush
        self.lanes = settings.lanes
        # Each provider batch's lines, read once: a key names its custom ids (`submit`), and the rest of
        # its lines follows from them (a custom id is a manifest row), so they never change.
        self._lines: dict[str, pl.DataFrame] = {}
        # The batch-lane runs measured, by provider, read once a round (`refresh`, `ready`) and again
        # only after this lane measured one of its own (`_observe`).
        self._measured: dict[str, list[Observation]] = {}

    # -- the batch's records --------------------------------------------------------------------------

    def sent(self) -> list[Sent]:
        names = sorted(n for n in self.storage.list(*self.info.folder(FOLDER)) if n.endswith(".json"))
        return [Sent(**self.storage.read_json(*self.info.folder(FOLDER, n))) for n in names]

    def _save(self, sent: Sent) -> None:
        self.storage.write_json(asdict(sent), *self.info.folder(FOLDER, f"{sent.key}.json"))

    def lines(self, sent: Sent) -> pl.DataFrame:
        if sent.key not in self._lines:
            self._lines[sent.key] = self.storage.read_parquet(*self.info.folder(FOLDER, f"{sent.key}.parquet"))
        return self._lines[sent.key]

    def clock_s(self) -> float:
        """Seconds since the batch was submitted, on BatchRouter's clock (`lanes.time_scale` in simulations)."""
        started = datetime.fromisoformat(self.info.submitted_at).timestamp()
        return (time.time() - started) * self.lanes.time_scale

    # -- a round ----------------------------------------------------------------------------------------

    def split(self, todo: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, int]:
        """(items for the online dispatcher, items to submit in provider batches, items waiting on a provider).

        `todo`: routed items without a final result. A batch-lane item goes online once its provider batch
        let go of it, or when its hedge time has passed before it was ever sent.
        """
        if not todo.height or "lane" not in todo.columns:
            return todo, todo.clear(), 0
        batch = todo.filter(pl.col("lane") == str(Lane.BATCH))
        online = todo.filter(pl.col("lane") != str(Lane.BATCH))
        held: set[str] = set()
        released: set[str] = set()
        now = self.clock_s()
        latest: dict[str, Sent] = {}  # each line's provider batch of the highest generation
        for sent in self.sent():
            ids = set(self.lines(sent)["item_id"].to_list())
            (held if sent.holds(now) else released).update(ids)
            for item_id in ids:
                if item_id not in latest or sent.generation > latest[item_id].generation:
                    latest[item_id] = sent
        released -= held
        again = {i for i in released if latest[i].resubmit}  # let go to go in a fresh provider batch
        released -= again
        waiting = batch.filter(pl.col("item_id").is_in(list(held)))
        back = batch.filter(pl.col("item_id").is_in(list(released)))
        fresh = batch.filter(~pl.col("item_id").is_in(list(held | released)))
        late = fresh.filter(pl.col("hedge_at_s").is_null() | (pl.col("hedge_at_s") <= now))
        fresh = fresh.filter(pl.col("hedge_at_s").is_not_null() & (pl.col("hedge_at_s") > now))
        hedged = self._hedge_lanes(pl.concat([back, late], how="vertical_relaxed"), now)
        return pl.concat([online, hedged], how="vertical_relaxed"), fresh, waiting.height

    def _hedge_lanes(self, items: pl.DataFrame, now_s: float) -> pl.DataFrame:
        """Batch-lane items going to the dispatcher, each route's on the lane its time left allows
        (`pricing.lanes.hedge_lane`: flex where sold and in time, else online)."""
        if not items.height:
            return items
        deadline = self.settings.deadline_s(self.info.workspace, self.info.deadline_s)
        parts = []
        for (route,), part in items.group_by("route", maintain_order=True):
            lane = Lane.ONLINE
            if deadline is not None:
                time_left = deadline - self.lanes.margin_s - now_s
                entry = self.catalog.entry(str(route))
                tokens = int(rate_tokens(part, entry).sum())
                lane = hedge_lane(self.settings, entry, part.height, tokens=tokens, time_left_s=time_left)
            parts.append(part.with_columns(pl.lit(str(lane)).alias("lane")))
        return pl.concat(parts, how="vertical_relaxed")

    def submit(self, items: pl.DataFrame, jobs: dict[str, Job]) -> set[str]:
        """Send `items` (batch lane, never sent) as provider batches, by route, each fitting its limits.

        Returns the items of provider batches the provider refused (they go online now). Items over the
        provider's capacity (OpenAI's enqueued tokens per model) stay unsent, for the next round.
        """
        refused: set[str] = set()
        generations = self._generations()
        items = items.with_columns(
            pl.col("item_id").replace_strict(generations, default=0, return_dtype=pl.Int64).alias("_generation")
        )
        for (route, generation), part in items.group_by("route", "_generation", maintain_order=True):
            entry = self.catalog.entry(str(route))
            hedge_at = part["hedge_at_s"].min()
            lines = [
                BatchLine(f"r{row}", jobs[item_id].request, entry.upstream, int(tokens))
                for row, item_id, tokens in part.select("row", "item_id", "input_tokens").iter_rows()
            ]
            by_custom = dict(zip((f"r{r}" for r in part["row"]), part["item_id"], strict=True))
            try:
                client = self._client(entry.provider)
            except ConfigError:
                refused.update(part["item_id"].to_list())  # no batch API here after all: online at once
                continue
            shared = self._on_shared_simulator(entry.provider)
            simulator = shared_simulator.key(self.settings.simulator) if shared else None
            for chunk in client.plan(lines):
                # The key is the chunk's content: a run killed between the provider making the batch and
                # our record of it sends the same chunk again under the same key, and the client finds
                # the batch it made instead of making a second one.
                # A resubmitted chunk's key names its generation (a first one's stays as it always was).
                content = f"{route}\n{','.join(x.custom_id for x in chunk)}" + (
                    f"\n#{generation}" if generation else ""
                )
                digest = hashlib.sha256(content.encode()).hexdigest()
                sent = Sent(key=f"{self.info.batch_id}-{digest[:16]}", route=str(route), provider=entry.provider,
                            lines=len(chunk), submitted_at=time.time(), state="submitting", generation=int(generation),
                            hedge_at_s=float(hedge_at) if hedge_at is not None else None,  # type: ignore[arg-type]
                            simulator=simulator)  # fmt: skip
                ids = [by_custom[x.custom_id] for x in chunk]
                frame = pl.DataFrame({"custom_id": [x.custom_id for x in chunk], "item_id": ids,
                                      "reserve_usd_micros": [jobs[i].reserve_usd_micros for i in ids],
                                      "input_sha256": [jobs[i].inputs_sha256() for i in ids]})  # fmt: skip
                self.storage.write_parquet(frame, *self.info.folder(FOLDER, f"{sent.key}.parquet"))
                self._lines[sent.key] = frame
                self._save(sent)
                try:
                    batch = _run(client, client.submit(chunk, metadata=self._metadata(sent), completion_window="24h"))
                except BatchCapacityError:
                    # Over the enqueued-token limit: nothing was made; the lines are sent again next round.
                    self._forget(sent)
                    break
                except ProviderError as exc:
                    sent.state, sent.error = "refused", f"{exc.code}: {exc.message}"
                    refused.update(ids)
                else:
                    sent.state = "in_flight"
                    self._update(sent, batch)
                self._save(sent)
        return refused

    def waiting_items(self, todo: pl.DataFrame) -> tuple[int, int]:
        """Items of `todo` (without an answer before this round) still waiting on the batch lane: (in a
        provider batch in flight, held back for capacity: never sent, not yet due online)."""
        _, unsent, held = self.split(todo)
        return held, unsent.height

    def refresh(self, *, cancel_all: bool = False) -> int:
        """Poll the provider batches still open, collect those that ended, hedge those past their time.

        Returns the lines still waiting on a provider. `cancel_all`: the batch was cancelled; every
        provider batch in flight is cancelled and its lines answered so far are not waited for.
        """
        now, wait_s = self.clock_s(), self.lanes.cancel_wait_s()
        self._measured.clear()
        for sent in self.sent():
            if sent.state == "submitting":
                self._forget(sent)  # a run died while sending it: its lines are sent again (same key) this round
                continue
            if not sent.open or sent.provider_batch_id is None:
                continue
            if sent.state == "hedged" and not sent.holds(now) and not sent.released:
                sent.released = True  # its time to end is up: this round sends its unanswered lines online
                self._save(sent)
            try:
                client = self._client(sent.provider, sent=sent)
                batch = _run(client, client.poll(sent.provider_batch_id))
            except TerminalError as exc:
                if exc.code == "not_found":  # the provider no longer knows it: its lines go online
                    sent.state, sent.error = "lost", f"{exc.code}: {exc.message}"
                    self._save(sent)
                continue
            except ProviderError:
                continue  # unreachable for now: asked again next round
            self._update(sent, batch)
            stall = self._stall(sent, batch, now)
            if batch.ended:
                self._collect(client, sent, batch)
            elif sent.state == "in_flight" and (cancel_all or now >= (sent.cancel_at(wait_s) or inf)):
                self._hedge(client, sent, release_at_s=now if cancel_all else (sent.hedge_at_s or now))
            elif sent.state == "in_flight" and (self._resubmit_pays(sent, now) or stall == "resubmit"):
                # Given the cancel's wait to end (what it answered is kept), then sent again in a fresh batch.
                sent.resubmit = True
                self._hedge(client, sent, release_at_s=now + wait_s)
            elif stall == "end":
                # Every line answered, and it does not end (stuck finalizing): a cancel ends it with every
                # answer. Its lines stay with it until their hedge time, as any hedge's, so a slow cancel
                # never has them sent twice.
                self._hedge(client, sent, release_at_s=sent.hedge_at_s or now)
            elif cancel_all:
                sent.release_at_s = now  # cancelled by the user: nothing more is waited for
            if sent.state == "hedged" and not sent.holds(now):
                sent.released = True  # cancelled by the user: this round ends its unanswered lines
            self._save(sent)
        return sum(s.lines for s in self.sent() if s.holds(now))

    def next_poll_wall(self, polls: int = 0, *, unsent: int = 0) -> float | None:
        """When to look again (wall clock): after the backoff for `polls` looks, or at a hedge time if sooner.

        None when nothing waits (no provider batch in flight, nothing held back for capacity)."""
        now = self.clock_s()
        holding = [sent for sent in self.sent() if sent.holds(now)]
        if not holding and not unsent:
            return None
        times = [time.time() + self.lanes.wall_s(self.lanes.poll_delay_s(polls))]
        started = datetime.fromisoformat(self.info.submitted_at).timestamp()
        for s in holding:
            at = s.release_at_s if s.state == "hedged" else s.cancel_at(self.lanes.cancel_wait_s())
            if at is not None:
                times.append(started + self.lanes.wall_s(at))
        return min(times)

    def ready(self) -> bool | float:
        """Whether an advance has something to do now: a provider batch ended, is gone, or is past its hedge
        time, or stalled. Polls without writing the batch's records (a run may hold the batch), only the
        looks' own progress counts (`_seen`); a provider that asks us to slow down gives the seconds to wait
        instead."""
        if unsent_of(self.storage, self.info.batch_id):
            return True  # only a run can send what was held back for capacity
        now = self.clock_s()
        self._measured.clear()
        for sent in self.sent():
            if not sent.holds(now):
                if sent.state == "hedged" and not sent.collected and not sent.released:
                    return True  # its time to end is up: a run sends its unanswered lines online
                continue
            due = sent.release_at_s if sent.state == "hedged" else sent.cancel_at(self.lanes.cancel_wait_s())
            if sent.provider_batch_id is None or (due is not None and now >= due):
                return True
            try:
                client = self._client(sent.provider, sent=sent, retry_timeout_s=10.0, max_retry_after_s=5.0)
                batch = _run(client, client.poll(sent.provider_batch_id))
            except (ConfigError, ServiceUnavailable):
                return True  # not reachable from here as configured (or now): a run finds out, and says so
            except RateLimitedError as exc:
                return float(exc.retry_after_s or self.lanes.poll_interval_s)
            except TerminalError as exc:
                if exc.code == "not_found":
                    return True
                continue
            except ProviderError:
                continue
            if batch.ended or self._resubmit_pays(sent, now):
                return True
            if self._stall(sent, batch, now) is not None:
                return True
        return False

    # -- inside -----------------------------------------------------------------------------------------

    def _generations(self) -> dict[str, int]:
        """Per line already sent, the generation a fresh provider batch of it is: one past its latest."""
        out: dict[str, int] = {}
        for sent in self.sent():
            if sent.state == "submitting":
                continue
            for item_id in self.lines(sent)["item_id"].to_list():
                out[item_id] = max(out.get(item_id, 0), sent.generation + 1)
        return out

    def _resubmit_pays(self, sent: Sent, now_s: float) -> bool:
        """Whether an in-flight provider batch is so far behind the runs measured that a fresh one, sent once
        its cancel has had `cancel_wait_s` to end, is `lanes.resubmit_min_gain` likelier to be done before
        its cancel time (the lines' hedge less the wait) than this one is before its own."""
        if sent.generation >= self.lanes.max_resubmits or sent.hedge_at_s is None or sent.created_at is None:
            return False
        wait_s = self.lanes.cancel_wait_s()
        sent_at_s = self._sent_at_s(sent)
        fresh_s = sent.hedge_at_s - wait_s - (now_s + wait_s)
        if fresh_s <= 0:
            return False
        if sent.provider not in self._measured:
            self._measured[sent.provider] = Predictions(self.settings.database).observations(sent.provider, Lane.BATCH)
        gain = Predictions.resubmit_gain(
            self._measured[sent.provider], sent.lines, elapsed_s=now_s - sent_at_s,
            cancel_by_s=sent.hedge_at_s - wait_s - sent_at_s, fresh_s=fresh_s, config=self.lanes,
        )  # fmt: skip
        return gain is not None and gain >= self.lanes.resubmit_min_gain

    def _stall(self, sent: Sent, batch: ProviderBatch, now_s: float) -> Literal["resubmit", "end"] | None:
        """What to do with an in-flight provider batch that stalled (`stalled`, by `lanes.stall_factor` and
        `stall_min_s`, or still validating after `lanes.validating_max_s`), whatever runs were measured (a
        batch's own pace needs none):
        - "resubmit": a fresh one of its unanswered lines, sent once its cancel has had `cancel_wait_s` to
          end, is predicted done (`Predictions.completion_s`: the runs measured, else the prior) before
          its cancel time;
        - "end": it answered every line and does not end (stuck finalizing): a cancel ends it;
        - None: it has not stalled, or nothing would be gained (no time for a fresh one, no resubmits left).
        """
        if sent.state != "in_flight" or sent.hedge_at_s is None:
            return None
        seen = self._seen(sent, batch, self.clock_s())
        validating = self.lanes.validating_max_s if batch.status == BatchStatus.VALIDATING else None
        if not stalled(seen, sent_at_s=self._sent_at_s(sent), now_s=now_s, factor=self.lanes.stall_factor,
                       min_s=self.lanes.stall_min_s, validating_for_s=validating):  # fmt: skip
            return None
        left = sent.lines - seen.answered
        if left <= 0:
            return "end"
        if sent.generation >= self.lanes.max_resubmits:
            return None
        wait_s = self.lanes.cancel_wait_s()
        fresh_s = sent.hedge_at_s - wait_s - (now_s + wait_s)
        needed = Predictions(self.settings.database).completion_s(sent.provider, Lane.BATCH, left, config=self.lanes)
        return "resubmit" if fresh_s >= needed else None

    def _seen(self, sent: Sent, batch: ProviderBatch, now_s: float) -> Seen:
        """The provider batch's progress as looks saw it, with this look's (at `now_s`). Its own small file,
        which every look writes when the count rose, the sensor's too (it writes nothing of the batch's
        records): the count only rises, so two looks racing lose at most a moment of when it last moved.
        A file that cannot be read or written counts as no look before this one: it delays a stall, never
        makes one."""
        parts = self.info.folder(FOLDER, PROGRESS, f"{sent.key}.json")
        try:
            raw = self.storage.read_json(*parts) if self.storage.exists(*parts) else {}
            seen = Seen(
                int(raw.get("answered", 0)), None if raw.get("moved_at_s") is None else float(raw["moved_at_s"])
            )
        except (StorageError, OSError, ValueError, TypeError, AttributeError):
            seen = Seen()
        answered = batch.succeeded + batch.failed
        if answered > seen.answered:
            seen = Seen(answered, now_s)
            try:
                self.storage.write_json(asdict(seen), *parts)
            except (StorageError, OSError):
                pass  # the next look records it
        return seen

    def _sent_at_s(self, sent: Sent) -> float:
        """When the provider batch was sent, on the batch's clock."""
        started = datetime.fromisoformat(self.info.submitted_at).timestamp()
        return (sent.submitted_at - started) * self.lanes.time_scale

    def _forget(self, sent: Sent) -> None:
        for parts in (
            (FOLDER, f"{sent.key}.json"),
            (FOLDER, f"{sent.key}.parquet"),
            (FOLDER, PROGRESS, f"{sent.key}.json"),
        ):
            if self.storage.exists(*self.info.folder(*parts)):
                self.storage.fs.rm(self.storage.path(*self.info.folder(*parts)))

    def _metadata(self, sent: Sent) -> dict[str, str]:
        return {"batchrouter_batch": self.info.batch_id, "batchrouter_key": sent.key}

    def _client(self, provider: str, *, sent: Sent | None = None, **options: Any) -> BatchClient:
        """The batch client of `provider`; for a provider batch already made (`sent`), of where it is.

        The built-in simulator is the deployment's, not this process's (its batches outlive a run): a new
        provider batch goes to the one of the current `[simulator]` settings, started if none runs; one
        already made is asked of the simulator that holds it, never started: if that one is gone, so
        is the batch (TerminalError not_found)."""
        config = self.settings.provider(provider)
        url = self.simulator_url
        if url is None and self._on_shared_simulator(provider):
            if sent is not None and sent.simulator is not None:
                url = shared_simulator.running_url(self.settings.database, sent.simulator)
                if url is None:
                    raise TerminalError("not_found", f"the built-in simulator {sent.simulator} that held provider "
                                        f"batch {sent.provider_batch_id} is no longer running")  # fmt: skip
            else:
                url = shared_simulator.url_for(self.settings.database, self.settings.simulator)
        return batch_client_for(provider, config, simulator_url=url, simulator=self.settings.simulator,
                                **options)  # fmt: skip

    def _on_shared_simulator(self, provider: str) -> bool:
        """Whether `provider`'s batches go to the deployment's built-in simulator (no address given)."""
        config = self.settings.provider(provider)
        return self.simulator_url is None and config.kind == "simulator" and not config.base_url

    def _update(self, sent: Sent, batch: ProviderBatch) -> None:
        sent.provider_batch_id = batch.provider_batch_id
        sent.status = str(batch.status)
        sent.created_at, sent.ended_at = batch.created_at, batch.ended_at
        sent.polls += 1
        if not sent.history or sent.history[-1] != sent.status:
            sent.history.append(sent.status)

    def _hedge(self, client: BatchClient, sent: Sent, *, release_at_s: float) -> None:
        """Cancel a provider batch that will not make the deadline. What it answered is collected when the
        cancel ends (at the batch price, and paid to the provider once); its unanswered lines go online
        then, or at `release_at_s` (the hedge time) at the latest."""
        assert sent.provider_batch_id is not None
        sent.release_at_s = release_at_s
        try:
            batch = _run(client, client.cancel(sent.provider_batch_id))
            self._update(sent, batch)
        except ProviderError as exc:
            sent.error = f"cancel: {exc.code}: {exc.message}"
        sent.state = "hedged"
        self._observe(sent, outcome="hedged")

    def _collect(self, client: BatchClient, sent: Sent, batch: ProviderBatch) -> None:
        """Every answered line of an ended provider batch into the checkpoint; the rest are let go."""
        ids = {row["custom_id"]: row for row in self.lines(sent).iter_rows(named=True)}
        entry = self.catalog.entry(sent.route)

        async def read() -> list[LineResult]:
            async with client:
                return [line async for line in client.results(batch)]

        try:
            results = asyncio.run(read())
        except ProviderError as exc:
            sent.error = f"results: {exc.code}: {exc.message}"
            return  # read again next round
        finished = utc(time.time())  # on BatchRouter's clock, as every receipt (the provider's may run faster)
        for line in results:
            sent_line = ids.get(line.custom_id)
            if sent_line is None:
                continue  # a line we never sent (cannot happen with the provider's own files)
            result = self._result(sent, entry, sent_line, line, finished)
            if result is not None:
                self.record(result)
        self.flush()  # the answers are durable before the record says they were collected
        sent.collected = True
        if sent.state == "in_flight":
            sent.state = "ended"
            self._observe(sent, outcome=_OUTCOME.get(batch.status, "failed"))

    def _result(
        self, sent: Sent, entry: Any, sent_line: dict[str, Any], line: LineResult, finished: Any
    ) -> ItemResult | None:
        """The checkpoint's row for a line: an answer, or a failure no lane would change; None: send it online."""
        common: dict[str, Any] = dict(
            item_id=sent_line["item_id"], route=sent.route, provider=sent.provider, model=entry.name,
            upstream=entry.upstream, attempts=1, reserve_usd_micros=sent_line["reserve_usd_micros"], latency_ms=None,
            started_at=utc(sent.submitted_at), finished_at=finished, input_sha256=sent_line["input_sha256"],
            fallbacks_used=0, rate_limited=0, lane=str(Lane.BATCH),
            provider_batch_id=sent.provider_batch_id, custom_id=line.custom_id,
        )  # fmt: skip
        if line.completion is not None:
            c = line.completion
            # What the provider says it billed, where it says (as online); else the catalog at the batch price.
            pico = entry.cost_pico(c.input_tokens, c.output_tokens, cached=c.cached_tokens, tier="batch")
            catalog_cost = micros_up(pico)
            cost = catalog_cost if c.reported_cost_usd_micros is None else c.reported_cost_usd_micros
            source = "catalog" if c.reported_cost_usd_micros is None else "provider"
            text = c.text
            return ItemResult(
                status=ItemStatus.SUCCEEDED, input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                cached_tokens=c.cached_tokens, cost_usd_micros=cost, cost_source=source if cost else "none",
                catalog_cost_usd_micros=catalog_cost, cost_usd_pico=pico if source == "catalog" else None,
                provider_request_id=c.request_id or line.request_id,
                output_sha256=hashlib.sha256(text.encode()).hexdigest(), output_text=text,
                choices=json.dumps(c.choices, ensure_ascii=False) if c.choices else None,
                finish_reason=c.finish_reason, error_code=None, error_message=None, **common,
            )  # fmt: skip
        error = line.error
        if isinstance(error, TerminalError) and error.code not in ("batch_expired", "batch_cancelled"):
            # A refusal is billed (its tokens, at the batch price), as online; other terminal errors are not.
            tokens = (error.input_tokens, error.output_tokens) if isinstance(error, RefusedError) else (0, 0)
            pico = entry.cost_pico(*tokens, tier="batch")
            cost = micros_up(pico)
            return ItemResult(
                status=ItemStatus.FAILED, input_tokens=tokens[0], output_tokens=tokens[1], cached_tokens=0,
                cost_usd_micros=cost, cost_usd_pico=pico, cost_source="catalog" if cost else "none",
                catalog_cost_usd_micros=cost,
                provider_request_id=line.request_id, output_sha256=None, output_text=None,
                choices=None, finish_reason=None, error_code=error.code,
                error_message=f"{error.message} (in provider batch {sent.provider_batch_id})", **common,
            )  # fmt: skip
        return None  # expired, cancelled, a retryable error: the online lane answers it

    def _observe(self, sent: Sent, *, outcome: Outcome) -> None:
        if sent.provider_batch_id is None or sent.created_at is None:
            return
        if sent.ended_at is not None and outcome != "hedged":
            duration = sent.ended_at - sent.created_at  # as the provider measured it
        else:  # still running when hedged: it took at least this long
            duration = (time.time() - sent.submitted_at) * self.lanes.time_scale
        Predictions(self.settings.database).record(
            sent.provider, Lane.BATCH, sent.lines, duration, outcome, key=sent.provider_batch_id
        )
        self._measured.pop(sent.provider, None)  # read again: the next provider batch's gain counts this run


def _run(client: BatchClient, call: Any) -> Any:
    """One call of a client, in its own event loop (the engine is synchronous; the clients are not)."""

    async def go() -> Any:
        async with client:
            return await call

    return asyncio.run(go())


def open_sent(storage: Storage, info: BatchInfo) -> list[dict[str, Any]]:
    """The batch's provider batches still worth polling, as recorded."""
    names = sorted(n for n in storage.list(*info.folder(FOLDER)) if n.endswith(".json"))
    records = [storage.read_json(*info.folder(FOLDER, n)) for n in names]
    return [r for r in records if Sent(**r).open]


def lines_in_flight(storage: Storage, settings: Settings, *, within_s: float) -> dict[str, int]:
    """Per route, the lines in provider batches still open across every waiting batch (any workspace:
    a provider's rate limits are its account's) whose hedge time falls within the next `within_s`
    (the batch's clock). A hedge of theirs would share the route's online rate with a new batch due
    by then, so the new batch's hedge time leaves room for them too; one hedging later does not.

    Read from the waiting markers, which the run that last changed a batch's provider batches wrote
    (`hedges_in_flight`): one small file per waiting batch, whatever its number of provider batches."""
    until = time.time() + settings.lanes.wall_s(within_s)
    out: dict[str, int] = {}
    for batch_id in waiting(storage):
        marker = _marker(storage, batch_id)
        hedges = marker.get("in_flight")
        if hedges is None:  # a marker an older version wrote: read the batch's own records
            try:
                hedges = hedges_in_flight(storage, settings, load_batch(storage, batch_id))
            except (BatchError, StorageError, FileNotFoundError):
                continue  # ended (its marker or folder gone) while we looked: nothing of it is in flight
        for route, lines, hedge_at in hedges:
            if hedge_at <= until:
                out[route] = out.get(route, 0) + int(lines)
    return out


def hedges_in_flight(storage: Storage, settings: Settings, info: BatchInfo) -> list[tuple[str, int, float]]:
    """The batch's provider batches still open that have a hedge time: (route, lines, hedge time on the wall)."""
    if not storage.exists(*info.folder(FOLDER)):
        return []
    started = datetime.fromisoformat(info.submitted_at).timestamp()
    return [(str(r["route"]), int(r["lines"]), started + settings.lanes.wall_s(float(r["hedge_at_s"])))
            for r in open_sent(storage, info) if r.get("hedge_at_s") is not None]  # fmt: skip


def waiting(storage: Storage) -> list[str]:
    """Batch ids waiting on a provider (the provider-batch sensor's list)."""
    return [n.removesuffix(".json") for n in storage.list(WAITING) if n.endswith(".json")]


def mark_waiting(
    storage: Storage,
    info: BatchInfo,
    next_poll_at: float | None,
    *,
    polls: int = 0,
    unsent: int | None = None,
    in_flight: list[tuple[str, int, float]] | None = None,
) -> None:
    """Say when the sensor should next look at the batch (None: it waits on no provider any more).

    `unsent`: batch-lane items held back for the provider's capacity, which only a run can send;
    `in_flight`: its open provider batches' lines and hedge times (`hedges_in_flight`), which only a
    run changes. Each is kept from the last marker when not given."""
    if next_poll_at is None:
        forget_waiting(storage, info.batch_id)
        return
    last = _marker(storage, info.batch_id) if unsent is None or in_flight is None else {}
    marker: dict[str, Any] = {"batch_id": info.batch_id, "next_poll_at": next_poll_at, "polls": polls,
                              "unsent": int(last.get("unsent", 0)) if unsent is None else unsent}  # fmt: skip
    hedges = last.get("in_flight") if in_flight is None else [list(h) for h in in_flight]
    if hedges is not None:
        marker["in_flight"] = hedges
    storage.write_json(marker, WAITING, f"{info.batch_id}.json")


def _marker(storage: Storage, batch_id: str) -> dict[str, Any]:
    if not storage.exists(WAITING, f"{batch_id}.json"):
        return {}
    try:
        return dict(storage.read_json(WAITING, f"{batch_id}.json"))
    except StorageError:  # removed between the two calls: it waits no more
        return {}


def looks_of(storage: Storage, batch_id: str) -> int:
    """How many looks at the waiting batch found nothing to do yet."""
    return int(_marker(storage, batch_id).get("polls", 0))


def unsent_of(storage: Storage, batch_id: str) -> int:
    """Batch-lane items the last run held back for capacity (0 when the batch is not waiting)."""
    return int(_marker(storage, batch_id).get("unsent", 0))


def due(storage: Storage, *, now: float | None = None) -> list[tuple[str, int]]:
    """Waiting batches whose next look is due, with how many looks found nothing to do yet."""
    now = time.time() if now is None else now
    out = []
    for batch_id in waiting(storage):
        marker = _marker(storage, batch_id)
        if marker and float(marker.get("next_poll_at", 0)) <= now:
            out.append((batch_id, int(marker.get("polls", 0))))
    return out


def forget_waiting(storage: Storage, batch_id: str) -> None:
    if storage.exists(WAITING, f"{batch_id}.json"):
        storage.fs.rm(storage.path(WAITING, f"{batch_id}.json"))


def lane_status(storage: Storage, settings: Settings, info: BatchInfo) -> dict[str, Any]:
    """Per lane: items quoted there, answered, waiting, and hedged (quoted for the batch lane, answered
    online); the provider batches with their provider's status; the time left to the deadline."""
    out: dict[str, Any] = {}
    if not storage.exists(*info.folder("quote.parquet")):
        return out
    quoted = storage.read_parquet(*info.folder("quote.parquet"))
    if "lane" not in quoted.columns:
        return out
    quoted = quoted.filter(pl.col("status") == "accepted").select("item_id", pl.col("lane").alias("quoted_lane"))
    if storage.exists(*info.folder("receipts.parquet")):
        got = storage.read_parquet(*info.folder("receipts.parquet")).select("item_id", "status", "lane")
        quoted = quoted.join(got, on="item_id", how="left")
    else:
        quoted = quoted.with_columns(pl.lit("pending").alias("status"), pl.col("quoted_lane").alias("lane"))
    answered = pl.col("status").is_in([ItemStatus.SUCCEEDED, ItemStatus.FAILED])
    out["lanes"] = (
        quoted.group_by("quoted_lane")
        .agg(
            pl.len().alias("items"),
            answered.sum().alias("answered"),
            (~answered).sum().alias("waiting"),
            (answered & (pl.col("lane") != pl.col("quoted_lane"))).sum().alias("hedged"),
        )  # fmt: skip
        .rename({"quoted_lane": "lane"})
        .sort("lane")
        .to_dicts()
    )
    if storage.exists(*info.folder(FOLDER)):
        names = sorted(n for n in storage.list(*info.folder(FOLDER)) if n.endswith(".json"))
        out["provider_batches"] = [
            {k: r[k] for k in ("key", "provider", "route", "provider_batch_id", "status", "lines")}
            | {"state": "resubmitted" if r.get("resubmit") else r["state"], "generation": r.get("generation", 0)}
            for r in (storage.read_json(*info.folder(FOLDER, n)) for n in names)
        ]
    deadline = settings.deadline_s(info.workspace, info.deadline_s)
    if deadline is not None:
        started = datetime.fromisoformat(info.submitted_at).timestamp()
        out["deadline_at"] = (
            datetime.fromtimestamp(started + settings.lanes.wall_s(deadline)).astimezone().isoformat(timespec="seconds")
        )
        out["time_left_s"] = round(deadline - (time.time() - started) * settings.lanes.time_scale, 1)
    return out
