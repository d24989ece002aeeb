"""Sensors: a dropped manifest starts a run; an approval resumes a batch held at the approval gate; a
provider batch that ended (or must be hedged) resumes a batch waiting on its providers; a due webhook
delivery starts a drain of the outbox; a batch run whose worker died is marked failed, so the instance's
run retries run it again from its checkpoint.

A batch's run is tagged `batchrouter/provider.<name>` for each provider its items may be sent to, so the
instance's per-provider run limits (`concurrency.runs.tag_concurrency_limits` in pipelines/dagster.yaml)
hold it in the queue while that provider is busy with other batches: batches on one provider share
its rate limit, batches on different providers run side by side.
"""

from typing import TYPE_CHECKING

import dagster as dg

from assets.batch import STATE_TAG, WORKER_TAG
from batchrouter.batches.leases import is_dead
from batchrouter.core.errors import BatchRouterError
from batchrouter.intake import drops
from pipelines.jobs import batch_job, webhook_outbox_job
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

PROVIDER_TAG = "batchrouter/provider."


def provider_tags(engine: "BatchRouter", batch_id: str) -> dict[str, str]:
    """One tag per provider the batch may use: what the per-provider run limits count."""
    return {PROVIDER_TAG + name: "true" for name in engine.batches.providers(batch_id)}


# The daemon evaluates sensors every 5 s at most; an interval below that makes it every loop, so a drop
# waits 2.5 s on average for its run (with 5 s, a tick that lands a moment early waits for the next loop).
@dg.sensor(job=batch_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=1)
def manifest_sensor(context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource) -> dg.SensorResult:
    """One run per new manifest under manifests/<workspace>/ (CSV, Parquet, JSONL)."""
    engine = batchrouter.engine()
    cursor = drops.Cursor.parse(context.cursor)
    found = drops.scan(engine.storage, cursor)
    runs = []
    for dropped in found:
        if not dropped.is_manifest:
            context.log.info(f"ignoring {dropped.key}: not a manifest (use .csv, .parquet or .jsonl)")
            continue
        try:
            view = engine.batches.accept_drop(dropped)
        except BatchRouterError as exc:  # quarantined with a report: one bad drop never holds up the others
            context.log.warning(str(exc))
            continue
        # The batch id is a digest of workspace and content: re-ticks and restarts ask for the same run.
        tags = {"batchrouter/workspace": view.workspace, "batchrouter/source": dropped.key, STATE_TAG: view.status,
                **provider_tags(engine, view.batch_id)}  # fmt: skip
        runs.append(dg.RunRequest(run_key=view.batch_id, partition_key=view.batch_id, tags=tags))
    return dg.SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batches.build_add_request([r.partition_key for r in runs])] if runs else [],
        cursor=cursor.advance(found).dump(),
    )


@dg.sensor(job=batch_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10)
def approval_sensor(context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource) -> dg.SensorResult:
    """Resume batches at the approval gate once approved (`batchrouter approve`, or approvals/<batch_id>)."""
    engine = batchrouter.engine()
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"{batch_id}:approved", partition_key=batch_id, tags=provider_tags(engine, batch_id))
            for batch_id in engine.batches.approved_waiting()
        ]
    )


@dg.sensor(job=batch_job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=15)
def provider_batch_sensor(context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource) -> dg.SensorResult:
    """Batches waiting on the providers' batch APIs: a run of the partition when a provider batch ended,
    is gone, or must be hedged by the deadline. Polling backs off per batch (`lanes.poll_interval_s`)."""
    import time

    engine = batchrouter.engine()
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"{batch_id}:provider:{time.time_ns()}", partition_key=batch_id,
                          tags=provider_tags(engine, batch_id))  # fmt: skip
            for batch_id in engine.batches.waiting_due()
        ]
    )


@dg.sensor(default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=15)
def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    """Batch runs left started by a deployment that died with them (`dagster dev` or its code server
    killed, the machine restarted): marked failed.

    The code server marks failed a run whose worker dies while it runs; when the code server goes too,
    nothing does (the default run launcher cannot check a worker's health), and the run would stay
    started for ever, holding its providers' run limits (pipelines/dagster.yaml) and its batch with them.
    Once it is marked failed, the instance's run retries (`run_retries`) start it again, and the new run
    goes on from the batch's checkpoint, sending only what has no recorded answer and settling once. A
    run whose worker is on another host, or has not named itself yet (`WORKER_TAG`), is left alone."""
    started = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=batch_job.name, statuses=[dg.DagsterRunStatus.STARTED])
    )
    dead = []
    for run in started:
        if not _worker_died(run):
            continue
        # Read again: a run that ended between the list and the look (its worker then exits) stays ended.
        now = context.instance.get_run_by_id(run.run_id)
        if now is None or now.status != dg.DagsterRunStatus.STARTED:
            continue
        dead.append(now)
    for run in dead:
        context.instance.report_run_failed(
            run, message=f"its run worker ({run.tags[WORKER_TAG]}) is gone; the run retries go on from the checkpoint"
        )
        context.log.warning(f"run {run.run_id}: its worker died; marked failed")
    return dg.SkipReason(f"{len(dead)} dead batch runs marked failed" if dead else "no batch run's worker has died")


def _worker_died(run: dg.DagsterRun) -> bool:
    """The run's own worker (a tag copied from the run it retries names that run) is known to be gone."""
    worker = run.tags.get(WORKER_TAG, "")
    return f"dagster run {run.run_id} " in worker and is_dead(worker)


# Named rather than passed: a sensor given a plain job that needs resources is copied by Definitions
# with a beta parameter, a warning on every `dagster dev` start.
@dg.sensor(job_name=webhook_outbox_job.name, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60)
def webhook_outbox_sensor(
    context: dg.SensorEvaluationContext, batchrouter: BatchRouterResource
) -> dg.SensorResult | dg.SkipReason:
    """Every minute: a drain of the webhook outbox when a delivery is due."""
    from datetime import UTC, datetime

    from batchrouter.output.delivery import next_due

    due = next_due(batchrouter.engine().settings)
    if due is None or due > datetime.now(UTC):
        return dg.SkipReason("no webhook delivery is due")
    # Keyed by the earliest due time: a re-tick before that drain ran asks for the same run.
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"webhooks:{due.isoformat()}")])
