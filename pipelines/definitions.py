"""The code location `dagster dev -w workspace.yaml` loads."""

import dagster as dg

from assets import batch as batch_assets
from assets import reporting as reporting_assets
from pipelines.jobs import batch_job, reconcile_job, sweep_job, usage_report_job, webhook_outbox_job
from pipelines.resources import ConfiguredBatchRouter
from pipelines.schedules import reconcile_schedule, sweeper_schedule, usage_report_schedule
from pipelines.sensors import (
    approval_sensor,
    dead_run_sensor,
    manifest_sensor,
    provider_batch_sensor,
    webhook_outbox_sensor,
)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([batch_assets, reporting_assets]),
    asset_checks=dg.load_asset_checks_from_modules([batch_assets]),
    jobs=[batch_job, usage_report_job, sweep_job, reconcile_job, webhook_outbox_job],
    sensors=[manifest_sensor, approval_sensor, provider_batch_sensor, webhook_outbox_sensor, dead_run_sensor],
    schedules=[usage_report_schedule, sweeper_schedule, reconcile_schedule],
    resources={"batchrouter": ConfiguredBatchRouter.from_env()},
)
