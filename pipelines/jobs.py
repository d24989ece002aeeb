"""Jobs: a batch (all its assets in one process), the daily usage report, the sweeper, Stripe reconcile,
the webhook outbox drain."""

import dagster as dg

from assets.reporting import usage_report
from batchrouter.access.actors import DAGSTER
from batchrouter.money.ledger import usd
from pipelines.resources import BatchRouterResource

# One step in the run's own process: a dropped manifest is done in seconds, not a process per step.
# It also resumes a batch (after approval, new credit, or to retry failed items): the engine does what is next.
batch_job = dg.define_asset_job(
    "batch_job", selection=dg.AssetSelection.groups("batch"), executor_def=dg.in_process_executor
)

usage_report_job = dg.define_asset_job(
    "usage_report_job", selection=dg.AssetSelection.assets(usage_report), executor_def=dg.in_process_executor
)


@dg.op
def sweep_dead_runs(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Expire reservations of batches whose runs died and mark those batches failed."""
    for swept in batchrouter.engine().batches.sweep():
        context.log.warning(f"released {usd(swept['released_usd_micros'])} held by dead batch {swept['hold']}")


@dg.op
def reconcile_stripe(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Credit paid Checkout Sessions the webhook missed (idempotent)."""
    import os

    engine = batchrouter.engine()
    if not os.environ.get(engine.settings.billing.stripe_api_key_env):
        context.log.info(
            f"Stripe is not configured ({engine.settings.billing.stripe_api_key_env} unset); nothing to do"
        )
        return
    found = engine.credits.reconcile(actor=DAGSTER)
    context.log.info(f"{found.events} checkout events seen, {found.credited} newly credited "
                     f"({usd(found.credited_usd_micros)})")  # fmt: skip


@dg.op
def drain_webhook_outbox(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Send every due webhook delivery once; failures wait in the outbox for their next try."""
    attempts = batchrouter.engine().webhooks.drain()
    delivered = sum(a.ok for a in attempts)
    context.log.info(f"{len(attempts)} webhook attempts: {delivered} delivered, {len(attempts) - delivered} not yet")


@dg.job(executor_def=dg.in_process_executor)
def sweep_job() -> None:
    sweep_dead_runs()


@dg.job(executor_def=dg.in_process_executor)
def reconcile_job() -> None:
    reconcile_stripe()


@dg.job(executor_def=dg.in_process_executor)
def webhook_outbox_job() -> None:
    drain_webhook_outbox()
