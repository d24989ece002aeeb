"""The daily usage rollup, one partition per day."""

import dagster as dg

from batchrouter.output.reporting import write_usage_report
from pipelines.resources import BatchRouterResource

daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")


@dg.asset(partitions_def=daily, kinds={"duckdb", "parquet"}, group_name="reporting")
def usage_report(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """usage_daily for one day (workspace, provider, model: items, tokens, cost), as Parquet."""
    day = context.partition_key
    url, frame = write_usage_report(batchrouter.settings, batchrouter.storage, day)
    return dg.MaterializeResult(
        metadata={
            "rows": frame.height,
            "items": int(frame["items"].sum() or 0) if frame.height else 0,
            "cost_usd_micros": int(frame["cost_usd_micros"].sum() or 0) if frame.height else 0,
            "path": dg.MetadataValue.path(url),
        }
    )
