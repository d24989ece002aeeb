"""A finished batch's requests, one row each, as every drop-in face reads them to write its result lines.

`outputs.parquet` (status, answer, error) joined with `receipts.parquet` (route, provider, lane,
tokens, cost, the provider's request id) and the manifest's endpoint, ordered by request line, so
each request has exactly one row whatever provider or lane answered it.
"""

from __future__ import annotations

import polars as pl

from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.storage import Storage

RECEIPT_COLUMNS = ("item_id", "route", "provider", "model", "lane", "input_tokens", "output_tokens", "cached_tokens",
                   "cost_usd_micros", "provider_request_id", "finished_at")  # fmt: skip


def answered_rows(storage: Storage, info: BatchInfo) -> pl.DataFrame:
    """One row per request line of a batch whose receipts are final, with `batch_id` beside."""
    outputs = storage.read_parquet(*info.folder("outputs.parquet"))
    receipts = storage.read_parquet(*info.folder("receipts.parquet")).select(*RECEIPT_COLUMNS)
    manifest = storage.read_parquet(*info.folder("manifest.parquet"))
    endpoint = manifest.select("row", "endpoint") if "endpoint" in manifest.columns else manifest.select("row")
    rows = (outputs.drop("metadata").join(receipts, on="item_id", how="left").join(endpoint, on="row", how="left")
            .unique("row", keep="first").sort("row"))  # fmt: skip
    return rows.with_columns(pl.lit(info.batch_id).alias("batch_id"))
