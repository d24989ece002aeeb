"""Sensors: a dropped manifest starts a run; an approval resumes a batch from the gate."""

import dagster as dg

from batchrouter.access.accounts import Accounts
from batchrouter.batches.lifecycle import load_batch
from batchrouter.core.errors import BatchError
from batchrouter.intake import drops as intake
from batchrouter.batches import settlement
from pipelines.jobs import batch_job, resume_job
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource


@dg.sensor(job=batch_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5)
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
        suspended = Accounts(batchrouter.settings.database).suspension(dropped.workspace)
        if suspended is not None:
            problem = f"workspace {dropped.workspace} is suspended ({suspended})"
            fix = "contact support to resume the workspace, then drop the manifest again"
            report = intake.refuse(storage, dropped, problem=problem, fix=fix)
            context.log.warning(f"quarantined {dropped.key}: workspace suspended; report at {report}")
            continue
        try:
            info = intake.accept(storage, dropped)
        except BatchError as exc:
            # A file that cannot become a batch (its folder is not a valid workspace name) must not fail
            # every tick and so hold up every other manifest: it is quarantined with the reason.
            fix = "drop it under manifests/<workspace>/ where <workspace> is a valid workspace name"
            report = intake.refuse(storage, dropped, problem=str(exc), fix=fix)
            context.log.warning(f"quarantined {dropped.key}: {exc}; report at {report}")
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


@dg.sensor(job=resume_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=5)
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
