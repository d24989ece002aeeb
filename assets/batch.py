"""The batch flow as assets, one partition per batch: manifest -> quote -> routed_items."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from batchrouter import batch
from batchrouter.ledger import InsufficientCredits, Ledger
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource

_COMMON = {"partitions_def": batches, "group_name": "batch"}


@dg.asset(kinds={"polars", "parquet"}, **_COMMON)
def manifest(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Parse and validate the batch's manifest; rejected rows keep their reason."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    parsed = batch.stage_manifest(batchrouter.storage, batchrouter.settings, batchrouter.catalog, info)
    return dg.MaterializeResult(
        metadata={
            "workspace": info.workspace,
            "source": info.source_name,
            "format": parsed.format,
            "rows": parsed.rows,
            "rejected_so_far": parsed.rejected.height,
            "path": dg.MetadataValue.path(batchrouter.storage.url(*info.folder("manifest.parquet"))),
        }
    )


@dg.asset(deps=[manifest], kinds={"polars", "parquet"}, **_COMMON)
def quote(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Count tokens, route and price every item in integer micro-dollars."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    priced = batch.stage_quote(
        batchrouter.storage,
        batchrouter.settings,
        batchrouter.catalog,
        info,
        batch.load_manifest(batchrouter.storage, info),
    )
    summary = priced.summary()
    return dg.MaterializeResult(
        metadata={
            "quote_id": summary["quote_id"],
            "catalog_version": summary["catalog_version"],
            "accepted": summary["accepted"],
            "rejected": summary["rejected"],
            "reserve_usd_micros": summary["reserve_usd_micros"],
            "expected_usd_micros": summary["expected_usd_micros"],
            "by_route": dg.MetadataValue.json(summary["by_route"]),
            "path": dg.MetadataValue.path(batchrouter.storage.url(*info.folder("quote.parquet"))),
        }
    )


@dg.asset(deps=[quote], kinds={"polars", "parquet"}, **_COMMON)
def routed_items(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Accepted items with their route chain, written partitioned by primary route."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    storage = batchrouter.storage
    counts = batch.stage_route(storage, info, batch.load_manifest(storage, info), batch.load_quote(storage, info))
    return dg.MaterializeResult(
        metadata={
            "items_by_route": dg.MetadataValue.json(counts),
            "routes": len(counts),
            "path": dg.MetadataValue.path(storage.url(*info.folder("routed_items"))),
        }
    )


@dg.asset(deps=[routed_items], kinds={"duckdb"}, **_COMMON)
def reservation(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Hold the quote's reservation against the workspace's credits; no credit, no dispatch."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    hold = Ledger(batchrouter.settings.database).hold(info.batch_id)
    if hold is None:
        try:
            batch.stage_reserve(batchrouter.storage, batchrouter.settings, info)
        except InsufficientCredits as exc:
            raise dg.Failure(description=f"insufficient_credits: {exc}", allow_retries=False) from exc
        hold = Ledger(batchrouter.settings.database).hold(info.batch_id)
    assert hold is not None
    return dg.MaterializeResult(metadata={"reserved_usd_micros": hold.amount_usd_micros, "hold_status": hold.status})


@dg.asset(deps=[reservation], kinds={"python", "parquet"}, **_COMMON)
def dispatch(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Send every item without a final receipt; write outputs.parquet and receipts.parquet."""
    storage = batchrouter.storage
    info = batch.load_batch(storage, context.partition_key)
    summary = batch.stage_dispatch(storage, batchrouter.settings, batchrouter.catalog, info)
    return dg.MaterializeResult(
        metadata={
            "status": summary["status"],
            "succeeded": summary["succeeded"],
            "failed": summary["failed"],
            "rejected": summary["rejected"],
            "reserve_usd_micros": summary["reserve_usd_micros"],
            "cost_usd_micros": summary["cost_usd_micros"],
            "retries": summary["retries"],
            "latency_p50_ms": summary["latency_p50_ms"] or 0.0,
            "latency_p95_ms": summary["latency_p95_ms"] or 0.0,
            "cost_by_route": dg.MetadataValue.json(summary["by_route"]),
            "failures": dg.MetadataValue.json(summary["failures"]),
            "outputs": dg.MetadataValue.path(summary["outputs"]),
            "receipts": dg.MetadataValue.path(summary["receipts"]),
        }
    )


@dg.asset(
    deps=[dispatch],
    kinds={"duckdb"},
    check_specs=[dg.AssetCheckSpec("ledger_matches_receipts", asset="settlement", blocking=True)],
    **_COMMON,
)
def settlement(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> Iterator[Any]:
    """Capture the receipts' actual cost from the hold and release the rest, exactly once."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    result = batch.stage_settle(batchrouter.storage, batchrouter.settings, info)
    yield dg.MaterializeResult(metadata={k: v for k, v in result.items() if isinstance(v, int | bool | str)})
    # Exact to the micro-dollar: what the ledger captured is what the receipts add up to.
    differs = result["captured_usd_micros"] != result["receipts_usd_micros"]
    yield dg.AssetCheckResult(
        check_name="ledger_matches_receipts",
        passed=not differs,
        metadata={
            "captured_usd_micros": result["captured_usd_micros"],
            "receipts_usd_micros": result["receipts_usd_micros"],
        },
    )
