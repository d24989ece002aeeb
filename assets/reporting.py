"""The daily usage rollup, one partition per day."""

import dagster as dg

from assets.metadata import usd
from batchrouter.output.reporting import write_usage_report
from pipelines.resources import BatchRouterResource

daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")


@dg.asset(partitions_def=daily, kinds={"duckdb", "parquet"}, group_name="reporting")
def usage_report(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """usage_daily for one day (workspace, provider, model: items, tokens, cost), as Parquet."""
    engine = batchrouter.engine()
    url, frame = write_usage_report(engine.settings, engine.storage, context.partition_key)
    cost = int(frame["cost_usd_micros"].sum() or 0) if frame.height else 0
    return dg.MaterializeResult(
        metadata={
            "rows": frame.height,
            "items": int(frame["items"].sum() or 0) if frame.height else 0,
            "cost": usd(cost),
            "cost_usd": cost / 1_000_000,  # a number, for the UI's metadata plots
            "path": dg.MetadataValue.path(url),
        }
    )
