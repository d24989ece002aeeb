"""A batch's state in one object: what `batchrouter status` prints and the Dagster UI shows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from batchrouter.batches.batch_lane import lane_status
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.config import Settings
from batchrouter.core.storage import Storage
from batchrouter.money.ledger import Ledger


def batch_status(storage: Storage, settings: Settings, info: BatchInfo) -> dict[str, Any]:
    folder = info.folder
    status: dict[str, Any] = storage.read_json(*folder("status.json")) if storage.exists(*folder("status.json")) else {}
    out: dict[str, Any] = {
        "batch_id": info.batch_id,
        "workspace": info.workspace,
        "source": info.source_name,
        "submitted_at": info.submitted_at,
        "status": status.get("status", "submitted"),
        "updated_at": status.get("at"),
        "message": status.get("message") or status.get("reason"),
    }
    if storage.exists(*folder("quote.json")):
        quote = storage.read_json(*folder("quote.json"))
        out["quote"] = {k: quote[k] for k in ("quote_id", "items", "accepted", "rejected", "reserve_usd_micros",
                                              "expected_usd_micros", "catalog_version")}  # fmt: skip
        out["quote"] |= {k: quote[k] for k in ("online_expected_usd_micros", "deadline_s", "by_lane") if k in quote}
    if storage.exists(*folder("receipts.parquet")):
        receipts = storage.read_parquet(*folder("receipts.parquet"))
        out["items_by_status"] = dict(receipts.group_by("status").len().sort("status").iter_rows())
        out["actual_usd_micros"] = int(receipts["cost_usd_micros"].sum() or 0)
        out["cost_by_route"] = (
            receipts.filter(pl.col("route").is_not_null())
            .group_by("route")
            .agg(pl.len().alias("items"), pl.col("cost_usd_micros").sum())
            .sort("route")
            .to_dicts()
        )
        out["outputs"] = storage.url(*folder("outputs.parquet"))
        out["receipts"] = storage.url(*folder("receipts.parquet"))
    out |= lane_status(storage, settings, info)
    holds = Ledger(settings.database).batch_holds(info.batch_id)
    out["holds"] = [
        {"hold": h.batch_id, "status": h.status, "reserved_usd_micros": h.amount_usd_micros,
         "captured_usd_micros": h.captured_usd_micros}
        for h in holds
    ]  # fmt: skip
    if out["updated_at"]:
        start = datetime.fromisoformat(info.submitted_at)
        out["duration_s"] = (datetime.fromisoformat(out["updated_at"]) - start).total_seconds()
    return out
