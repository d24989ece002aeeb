"""Per-item outputs and receipts: `outputs.parquet` and `receipts.parquet`, one row per manifest row,
built from the dispatcher's checkpoint (`batchrouter.execution.checkpoint`) and the quote.
"""

from __future__ import annotations

import polars as pl

from batchrouter.execution.checkpoint import RESULT_SCHEMA, ItemStatus

FINAL_STATES = (ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.REJECTED)

RECEIPT_COLUMNS = (
    "item_id", "batch_id", "workspace", "route", "provider", "model", "status", "attempts", "input_tokens",
    "output_tokens", "cached_tokens", "reserve_usd_micros", "cost_usd_micros", "cost_usd_pico", "cost_source",
    "catalog_cost_usd_micros", "latency_ms",
    "started_at", "finished_at", "provider_request_id", "input_sha256", "output_sha256", "lane", "provider_batch_id",
    "custom_id",
)  # fmt: skip
OUTPUT_COLUMNS = (
    "row", "item_id", "status", "output_text", "choices", "finish_reason", "error_code", "error_message", "metadata",
)  # fmt: skip


def build_outputs(
    quote_items: pl.DataFrame, manifest_items: pl.DataFrame, results: pl.DataFrame, *, batch_id: str, workspace: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(outputs, receipts): one row per manifest row, dispatched results and quote rejections alike."""
    rejected = quote_items.filter(pl.col("status") == ItemStatus.REJECTED).select(
        "item_id",
        pl.lit(ItemStatus.REJECTED.value).alias("status"),
        pl.col("reject_code").alias("error_code"),
        pl.col("reject_reason").alias("error_message"),
        pl.lit(0, pl.Int64).alias("attempts"),
        pl.lit(0, pl.Int64).alias("reserve_usd_micros"),
        pl.lit(0, pl.Int64).alias("cost_usd_micros"),
        pl.col("model"),
        pl.col("row").alias("_row"),
    )
    lane = pl.col("lane") if "lane" in quote_items.columns else pl.lit(None, pl.String)
    reserve = pl.col("reserve_usd_micros") if "reserve_usd_micros" in quote_items.columns else pl.lit(None, pl.Int64)
    base = quote_items.select(pl.col("row").alias("_row"), "item_id", pl.col("status").alias("_quoted"),
                              lane.alias("_lane"), reserve.alias("_reserve"))  # fmt: skip
    meta = manifest_items.select(pl.col("row").alias("_row"), "metadata")
    accepted = base.filter(pl.col("_quoted") == "accepted").join(results, on="item_id", how="left")
    merged = pl.concat([accepted.drop("_quoted"), rejected], how="diagonal_relaxed").join(meta, on="_row", how="left")
    merged = merged.sort("_row").with_columns(
        pl.col("status").fill_null(ItemStatus.PENDING.value),
        pl.lit(batch_id).alias("batch_id"),
        pl.lit(workspace).alias("workspace"),
        pl.col("_row").alias("row"),
    )
    for name, dtype in RESULT_SCHEMA.items():
        if name not in merged.columns:
            merged = merged.with_columns(pl.lit(None, dtype).alias(name))
    # An item still waiting shows the lane it was quoted on and what is reserved for it; an answered one the
    # lane that answered it and its own reserve.
    merged = merged.with_columns(pl.col("cost_usd_micros").fill_null(0), pl.col("attempts").fill_null(0),
                                 pl.coalesce("lane", "_lane").alias("lane"),
                                 pl.coalesce("reserve_usd_micros", "_reserve").alias("reserve_usd_micros"))  # fmt: skip
    return merged.select(OUTPUT_COLUMNS), merged.select(RECEIPT_COLUMNS)
