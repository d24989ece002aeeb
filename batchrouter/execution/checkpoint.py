"""The dispatcher's checkpoint: each item's final result, recorded in chunks while a run goes.

Every final result is written to a checkpoint chunk (`dispatch/chunks/*.parquet`, each written
atomically) within `checkpoint_items` results or `checkpoint_seconds`, whichever comes first. A run
that restarts reads the chunks and dispatches only items that have no final result yet, so killing
the process at any moment loses at most the requests in flight, never a recorded result.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import polars as pl

from batchrouter.core.amounts import PICO_PER_MICRO, charge_lines
from batchrouter.core.storage import Storage


class ItemStatus(StrEnum):
    """An item's state in the results: answered, failed for good, refused before dispatch, or not yet final."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    PENDING = "pending"


RESULT_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "status": pl.String(),
    "route": pl.String(),
    "provider": pl.String(),
    "model": pl.String(),
    "upstream": pl.String(),
    "attempts": pl.Int64(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "cached_tokens": pl.Int64(),
    "reserve_usd_micros": pl.Int64(),
    # What the item is charged. Its exact cost, in pico-dollars: a chunk's lines are charged their exact
    # total rounded up once (`amounts.charge_lines`), so each line's charge is its exact cost rounded down
    # or up. Null in chunks written before the column existed (their charges were each rounded up).
    "cost_usd_micros": pl.Int64(),
    "cost_usd_pico": pl.Int64(),
    "cost_source": pl.String(),
    # What the catalog says the answer costs (its tokens at the lane's prices), beside what was charged:
    # they differ where the provider reported its own cost (`cost_source` "provider"); the reporting view
    # `cost_reconciliation` sums both.
    "catalog_cost_usd_micros": pl.Int64(),
    "latency_ms": pl.Int64(),
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
    "provider_request_id": pl.String(),
    "input_sha256": pl.String(),
    "output_sha256": pl.String(),
    "output_text": pl.String(),
    "choices": pl.String(),  # JSON: every choice in OpenAI's shape (tool calls, n choices)
    "finish_reason": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "fallbacks_used": pl.Int64(),
    "rate_limited": pl.Int64(),
    "lane": pl.String(),  # online, flex or batch (`pricing.lanes`)
    "provider_batch_id": pl.String(),  # the provider batch that answered it (batch lane)
    "custom_id": pl.String(),  # its line's id in that provider batch
}


@dataclass
class ItemResult:
    """The final state of one dispatched item."""

    item_id: str
    status: ItemStatus
    route: str | None
    provider: str | None
    model: str | None
    upstream: str | None
    attempts: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reserve_usd_micros: int
    cost_usd_micros: int
    cost_source: str
    latency_ms: int | None
    started_at: datetime | None
    finished_at: datetime
    provider_request_id: str | None
    input_sha256: str
    output_sha256: str | None
    output_text: str | None
    choices: str | None
    finish_reason: str | None
    error_code: str | None
    error_message: str | None
    fallbacks_used: int
    rate_limited: int
    lane: str = "online"
    provider_batch_id: str | None = None
    custom_id: str | None = None
    catalog_cost_usd_micros: int | None = None
    # Exact, where it is finer than a micro-dollar (a cost by the catalog); None: `cost_usd_micros` is exact.
    cost_usd_pico: int | None = None


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Checkpoint:
    """Chunks of final results under `batches/<id>/dispatch/chunks/`."""

    def __init__(self, storage: Storage, batch_id: str, *, every_items: int = 500, every_seconds: float = 5.0) -> None:
        self.storage = storage
        self.folder = ("batches", batch_id, "dispatch", "chunks")
        self.every_items = every_items
        self.every_seconds = every_seconds
        self.pending: list[ItemResult] = []
        self.last_flush = time.monotonic()
        self.written = 0

    def load(self) -> pl.DataFrame:
        """Every result recorded so far, one row per item (the first recorded wins)."""
        names = [n for n in self.storage.list(*self.folder) if n.endswith(".parquet")]
        if not names:
            return pl.DataFrame(schema=RESULT_SCHEMA)
        parts = self.storage.read_parquets([(*self.folder, n) for n in names])
        # Chunks written before a column existed have none: it is null there (the lane: online).
        frame = pl.concat([pl.DataFrame(schema=RESULT_SCHEMA), *parts], how="diagonal_relaxed")
        frame = frame.with_columns(pl.col("lane").fill_null("online"))
        return frame.unique("item_id", keep="first", maintain_order=True)

    def add(self, result: ItemResult) -> None:
        self.pending.append(result)
        if len(self.pending) >= self.every_items or time.monotonic() - self.last_flush >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        # Column by column: `asdict` deep-copies every value of every row, the flush's main cost at the rate limit.
        rows = self.pending
        columns = {name: [getattr(r, name) for r in rows] for name in RESULT_SCHEMA}
        # The chunk is the group its lines are charged in: what it records is what settlement captures.
        exact = [r.cost_usd_micros * PICO_PER_MICRO if r.cost_usd_pico is None else r.cost_usd_pico for r in rows]
        charged = charge_lines(exact)
        columns["cost_usd_pico"] = exact
        columns["cost_usd_micros"] = charged
        # A cost by the catalog is the catalog's figure, as charged; a provider's own figure is reconciled
        # with the catalog's, each line rounded up.
        columns["catalog_cost_usd_micros"] = [
            c if r.cost_source == "catalog" else r.catalog_cost_usd_micros for r, c in zip(rows, charged, strict=True)
        ]
        frame = pl.DataFrame(columns, schema=RESULT_SCHEMA)
        # Sortable names: time then a random suffix, so two writers never collide.
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self.storage.write_parquet(frame, *self.folder, name)
        self.written += len(self.pending)
        self.pending = []

    def retry_failed(self) -> int:
        """Forget failed results so the next run dispatches those items again; returns how many."""
        results = self.load()
        failed = results.filter(pl.col("status") == ItemStatus.FAILED).height
        if failed:
            kept = results.filter(pl.col("status") != ItemStatus.FAILED)
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            self.storage.write_parquet(kept, *self.folder, name)
            for old in self.storage.list(*self.folder):
                if old != name:
                    self.storage.fs.rm(self.storage.path(*self.folder, old))
        return failed
