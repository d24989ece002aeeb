"""Sensors: a dropped manifest starts a run; an approval resumes a batch from the gate."""

import dagster as dg

from batchrouter.batches import settlement
from batchrouter.core.batch_info import load_batch
from batchrouter.core.errors import BatchError, Forbidden
from batchrouter.engine import BatchRouter
from batchrouter.intake import drops as intake
from pipelines.jobs import batch_job, resume_job, webhook_outbox_job
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource


@dg.sensor(job=batch_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10)
def manifest_sensor(context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource) -> dg.SensorResult:
    """One run per new manifest under manifests/<workspace>/ (CSV, Parquet, JSONL)."""
    storage = batchrouter.storage
    cursor = intake.Cursor.parse(context.cursor)
    found = intake.scan(storage, cursor)
    runs, new_batches = [], []
    for dropped in found:
        if not dropped.is_manifest:
            context.log.info(f"ignoring {dropped.key}: not a manifest (use .csv, .parquet or .jsonl)")
            continue
        try:
            info = BatchRouter(batchrouter.settings).batches.accept_drop(dropped)
        except Forbidden as exc:
            # One file that cannot become a batch (suspended workspace, bad folder name) must not fail every
            # tick and so hold up every other manifest: it is quarantined with the reason.
            context.log.warning(str(exc))
            continue
        new_batches.append(info.batch_id)
        # The batch id is a digest of workspace and content: re-ticks and restarts ask for the same run.
        runs.append(dg.RunRequest(run_key=info.batch_id, partition_key=info.batch_id,
                                  tags={"workspace": info.workspace, "source": dropped.key}))  # fmt: skip
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batches.build_add_request(new_batches)] if new_batches else [],
        cursor=cursor.advance(found).dump(),
    )


@dg.sensor(job=resume_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10)
def approval_sensor(context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource) -> dg.SensorResult:
    """Resume batches at the approval gate once approved (`batchrouter approve`, or approvals/<batch_id>)."""
    storage, settings = batchrouter.storage, batchrouter.settings
    runs = []
    for batch_id in settlement.awaiting(storage):
        try:
            info = load_batch(storage, batch_id)
        except BatchError:
            # One stale marker (its batch removed from the bucket) must not block every other approval.
            context.log.warning(f"ignoring awaiting_approval/{batch_id}: the batch no longer exists")
            continue
        if settlement.is_approved(storage, settings, info):
            runs.append(dg.RunRequest(run_key=f"{batch_id}:approved", partition_key=batch_id))
    return dg.SensorResult(run_requests=runs)


@dg.sensor(job=webhook_outbox_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60)
def webhook_outbox_sensor(
    context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource
) -> dg.SensorResult | dg.SkipReason:
    """Every minute: a drain of the webhook outbox when a delivery is due."""
    from datetime import UTC, datetime

    from batchrouter.output.delivery import next_due

    due = next_due(batchrouter.settings)
    if due is None or due > datetime.now(UTC):
        return dg.SkipReason("no webhook delivery is due")
    # Keyed by the earliest due time: a re-tick before that drain ran asks for the same run.
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"webhooks:{due.isoformat()}")])
