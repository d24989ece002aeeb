"""The daily usage rollup, one partition per day."""

import dagster as dg

from assets.metadata import usd
from batchrouter.access.actors import DAGSTER
from pipelines.resources import BatchRouterResource

daily = dg.DailyPartitionsDefinition(start_date="2026-01-01")


@dg.asset(partitions_def=daily, kinds={"duckdb", "parquet"}, group_name="reporting")
def usage_report(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> dg.MaterializeResult:
    """usage_daily for one day (workspace, provider, model: items, tokens, cost), as Parquet."""
    report = batchrouter.engine().reports.usage(context.partition_key, actor=DAGSTER)
    return dg.MaterializeResult(
        metadata={
            "rows": report.rows,
            "items": report.items,
            "cost": usd(report.cost_usd_micros),
            "cost_usd": report.cost_usd_micros / 1_000_000,  # a number, for the UI's metadata plots
            "path": dg.MetadataValue.path(report.url),
        }
    )
