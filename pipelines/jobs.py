"""Jobs: a batch (all its assets in one process), the daily usage report, the sweeper, Stripe reconcile."""

import dagster as dg

from assets.reporting import usage_report
from pipelines.resources import BatchRouterResource

# One step in the run's own process: a dropped manifest is done in seconds, not a process per step.
# It also resumes a batch (after approval, new credit, or to retry failed items): the engine does what is next.
batch_job = dg.define_asset_job(
    "batch_job", selection=dg.AssetSelection.groups("batch"), executor_def=dg.in_process_executor
)

usage_report_job = dg.define_asset_job("usage_report_job", selection=dg.AssetSelection.assets(usage_report))


@dg.op
def sweep_dead_runs(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Expire reservations of batches whose runs died and mark those batches failed."""
    for swept in batchrouter.engine().batches.sweep():
        context.log.warning(f"released {swept['released_usd_micros']} micro-USD held by dead batch {swept['hold']}")


@dg.op
def reconcile_stripe(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Credit paid Checkout Sessions the webhook missed (idempotent)."""
    import os

    from batchrouter.money.billing import reconcile

    engine = batchrouter.engine()
    if not os.environ.get(engine.settings.billing.stripe_api_key_env):
        context.log.info(
            f"Stripe is not configured ({engine.settings.billing.stripe_api_key_env} unset); nothing to do"
        )
        return
    results = reconcile(engine.settings, engine.ledger)
    credited = [r for r in results if r.outcome == "credited"]
    context.log.info(f"{len(results)} checkout events seen, {len(credited)} newly credited")


@dg.job
def sweep_job() -> None:
    sweep_dead_runs()


@dg.job
def reconcile_job() -> None:
    reconcile_stripe()
