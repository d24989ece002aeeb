"""Per-item results: checkpoint chunks during a run, then `outputs.parquet` and `receipts.parquet`.

Every final result is written to a checkpoint chunk (`dispatch/chunks/*.parquet`, each written
atomically) within `checkpoint_items` results or `checkpoint_seconds`, whichever comes first. A run
that restarts reads the chunks and dispatches only items that have no final result yet, so killing
the process at any moment loses at most the requests in flight, never a recorded result.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import polars as pl

from batchrouter.core.storage import Storage

FINAL_STATES = ("succeeded", "failed", "rejected")

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
    "cost_usd_micros": pl.Int64(),
    "cost_source": pl.String(),
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
}

RECEIPT_COLUMNS = (
    "item_id", "batch_id", "workspace", "route", "provider", "model", "status", "attempts", "input_tokens",
    "output_tokens", "cached_tokens", "reserve_usd_micros", "cost_usd_micros", "cost_source", "latency_ms",
    "started_at", "finished_at", "provider_request_id", "input_sha256", "output_sha256",
)  # fmt: skip
OUTPUT_COLUMNS = (
    "row", "item_id", "status", "output_text", "choices", "finish_reason", "error_code", "error_message", "metadata",
)  # fmt: skip


@dataclass
class ItemResult:
    """The final state of one dispatched item."""

    item_id: str
    status: str
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
        parts = [self.storage.read_parquet(*self.folder, n) for n in names]
        return pl.concat(parts, how="vertical_relaxed").unique("item_id", keep="first", maintain_order=True)

    def add(self, result: ItemResult) -> None:
        self.pending.append(result)
        if len(self.pending) >= self.every_items or time.monotonic() - self.last_flush >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        frame = pl.DataFrame([asdict(r) for r in self.pending], schema=RESULT_SCHEMA)
        # Sortable names: time then a random suffix, so two writers never collide.
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self.storage.write_parquet(frame, *self.folder, name)
        self.written += len(self.pending)
        self.pending = []

    def retry_failed(self) -> int:
        """Forget failed results so the next run dispatches those items again; returns how many."""
        results = self.load()
        failed = results.filter(pl.col("status") == "failed").height
        if failed:
            kept = results.filter(pl.col("status") != "failed")
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            self.storage.write_parquet(kept, *self.folder, name)
            for old in self.storage.list(*self.folder):
                if old != name:
                    self.storage.fs.rm(self.storage.path(*self.folder, old))
        return failed


def build_outputs(
    quote_items: pl.DataFrame, manifest_items: pl.DataFrame, results: pl.DataFrame, *, batch_id: str, workspace: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(outputs, receipts): one row per manifest row, dispatched results and quote rejections alike."""
    rejected = quote_items.filter(pl.col("status") == "rejected").select(
        "item_id",
        pl.lit("rejected").alias("status"),
        pl.col("reject_code").alias("error_code"),
        pl.col("reject_reason").alias("error_message"),
        pl.lit(0, pl.Int64).alias("attempts"),
        pl.lit(0, pl.Int64).alias("reserve_usd_micros"),
        pl.lit(0, pl.Int64).alias("cost_usd_micros"),
        pl.col("model"),
        pl.col("row").alias("_row"),
    )
    base = quote_items.select(pl.col("row").alias("_row"), "item_id", pl.col("status").alias("_quoted"))
    meta = manifest_items.select(pl.col("row").alias("_row"), "metadata")
    accepted = base.filter(pl.col("_quoted") == "accepted").join(results, on="item_id", how="left")
    merged = pl.concat([accepted.drop("_quoted"), rejected], how="diagonal_relaxed").join(meta, on="_row", how="left")
    merged = merged.sort("_row").with_columns(
        pl.col("status").fill_null("pending"),
        pl.lit(batch_id).alias("batch_id"),
        pl.lit(workspace).alias("workspace"),
        pl.col("_row").alias("row"),
    )
    for name, dtype in RESULT_SCHEMA.items():
        if name not in merged.columns:
            merged = merged.with_columns(pl.lit(None, dtype).alias(name))
    merged = merged.with_columns(pl.col("cost_usd_micros").fill_null(0), pl.col("attempts").fill_null(0))
    return merged.select(OUTPUT_COLUMNS), merged.select(RECEIPT_COLUMNS)
