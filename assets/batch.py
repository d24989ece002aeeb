"""The batch flow as assets, one partition per batch:
manifest -> quote -> routed_items -> reservation (approval gate) -> dispatch -> settlement."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from batchrouter.batches import lifecycle as batch
from batchrouter.batches.status import batch_status
from batchrouter.core.errors import ManifestError
from batchrouter.batches import settlement as money
from batchrouter.money.ledger import InsufficientCredits
from batchrouter.output import delivery as webhooks
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource

_COMMON: dict[str, Any] = {"partitions_def": batches, "group_name": "batch"}


@dg.asset(kinds={"polars", "parquet"}, **_COMMON)
def manifest(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Parse and validate the batch's manifest; rejected rows keep their reason."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    try:
        parsed = batch.stage_manifest(batchrouter.storage, batchrouter.settings, batchrouter.catalog, info)
    except ManifestError as exc:
        raise dg.Failure(description=f"unusable manifest, quarantined: {exc}", allow_retries=False) from exc
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
    storage = batchrouter.storage
    info = batch.load_batch(storage, context.partition_key)
    priced = batch.stage_quote(
        storage, batchrouter.settings, batchrouter.catalog, info, batch.load_manifest(storage, info)
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
            "path": dg.MetadataValue.path(storage.url(*info.folder("quote.parquet"))),
        }
    )


@dg.asset(deps=[quote], kinds={"polars", "parquet"}, **_COMMON)
def routed_items(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Accepted items with their route chain, written partitioned by primary route."""
    storage = batchrouter.storage
    info = batch.load_batch(storage, context.partition_key)
    counts = batch.stage_route(storage, info, batch.load_manifest(storage, info), batch.load_quote(storage, info))
    return dg.MaterializeResult(
        metadata={
            "items_by_route": dg.MetadataValue.json(counts),
            "routes": len(counts),
            "path": dg.MetadataValue.path(storage.url(*info.folder("routed_items"))),
        }
    )


@dg.asset(deps=[routed_items], kinds={"duckdb"}, output_required=False, **_COMMON)
def reservation(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> Iterator[dg.Output[None]]:
    """Approval gate, then hold this round's reservation; no approval or no credit, no dispatch."""
    storage, settings = batchrouter.storage, batchrouter.settings
    info = batch.load_batch(storage, context.partition_key)
    if not money.gate(storage, settings, info):
        # No output: dispatch and settlement are skipped until the batch is approved.
        context.log.warning(storage.read_json(*info.folder("status.json"))["message"])
        return
    try:
        entry = money.stage_reserve(storage, settings, info)
    except InsufficientCredits as exc:
        raise dg.Failure(description=f"insufficient_credits: {exc}", allow_retries=False) from exc
    holds = [
        h.__dict__ | {"created_at": str(h.created_at)}
        for h in money.Ledger(settings.database).batch_holds(info.batch_id)
    ]
    yield dg.Output(
        None,
        metadata={
            "reserved_now_usd_micros": entry.amount_usd_micros if entry else 0,
            "rounds": len(holds),
            "holds": dg.MetadataValue.json(holds),
        },
    )


@dg.asset(
    deps=[reservation],
    kinds={"python", "parquet"},
    check_specs=[dg.AssetCheckSpec("every_item_accounted_once", asset="dispatch", blocking=True)],
    **_COMMON,
)
def dispatch(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> Iterator[Any]:
    """Send every item without a final receipt; write outputs.parquet and receipts.parquet."""
    storage = batchrouter.storage
    info = batch.load_batch(storage, context.partition_key)
    summary = batch.stage_dispatch(storage, batchrouter.settings, batchrouter.catalog, info)
    yield dg.MaterializeResult(
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
    accounted = batch.accounting(storage, info)
    yield dg.AssetCheckResult(check_name="every_item_accounted_once", passed=accounted["ok"], metadata=accounted)


@dg.asset(
    deps=[dispatch],
    kinds={"duckdb"},
    check_specs=[
        dg.AssetCheckSpec("ledger_matches_receipts", asset="settlement", blocking=True),
        dg.AssetCheckSpec("reserve_covers_actual", asset="settlement"),
    ],
    **_COMMON,
)
def settlement(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> Iterator[Any]:
    """Capture the receipts' actual cost from the holds and release the rest, exactly once."""
    storage, settings = batchrouter.storage, batchrouter.settings
    info = batch.load_batch(storage, context.partition_key)
    result = money.stage_settle(storage, settings, info)
    status = batch_status(storage, settings, info)
    yield dg.MaterializeResult(
        metadata={
            **{k: v for k, v in result.items() if isinstance(v, int | bool | str)},
            "items_by_status": dg.MetadataValue.json(status.get("items_by_status", {})),
            "quote_reserve_usd_micros": status.get("quote", {}).get("reserve_usd_micros", 0),
            "quote_expected_usd_micros": status.get("quote", {}).get("expected_usd_micros", 0),
            "cost_by_route": dg.MetadataValue.json(status.get("cost_by_route", [])),
            "duration_s": float(status.get("duration_s") or 0.0),
        }
    )
    # Exact to the micro-dollar: what the ledger captured is what the receipts add up to.
    yield dg.AssetCheckResult(
        check_name="ledger_matches_receipts",
        passed=result["captured_usd_micros"] == result["receipts_usd_micros"],
        metadata={"captured": result["captured_usd_micros"], "receipts": result["receipts_usd_micros"]},
    )
    yield dg.AssetCheckResult(
        check_name="reserve_covers_actual",
        passed=result["receipts_usd_micros"] <= result["reserved_usd_micros"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"reserved": result["reserved_usd_micros"], "actual": result["receipts_usd_micros"]},
    )


@dg.asset(deps=[settlement], kinds={"python"}, **_COMMON)
def delivery(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """Send the signed batch.completed webhook (Standard Webhooks) to the workspace's endpoints."""
    info = batch.load_batch(batchrouter.storage, context.partition_key)
    attempts = webhooks.deliver_batch_completed(batchrouter.settings, batchrouter.storage, info)
    delivered = {a.endpoint_id for a in attempts if a.ok}
    return dg.MaterializeResult(
        metadata={
            "attempts": len(attempts),
            "endpoints_delivered": len(delivered),
            "endpoints_failed": len({a.endpoint_id for a in attempts} - delivered),
        }
    )
