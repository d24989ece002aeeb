import dagster as dg

from assets.reporting import usage_report
from pipelines.resources import BatchRouterResource

# The main job: every asset of a batch partition, in dependency order (partitioned like its assets).
batch_job = dg.define_asset_job(
    "batch_job", selection=dg.AssetSelection.groups("batch"), executor_def=dg.in_process_executor
)

# After approval: from the gate on.
resume_job = dg.define_asset_job(
    "resume_job",
    selection=dg.AssetSelection.assets("reservation", "dispatch", "settlement", "delivery"),
    executor_def=dg.in_process_executor,
)

usage_report_job = dg.define_asset_job("usage_report_job", selection=dg.AssetSelection.assets(usage_report))


@dg.op
def sweep_dead_runs(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Expire reservations of batches whose runs died and mark those batches failed."""
    from datetime import timedelta

    from batchrouter.batches.settlement import sweep

    stale = timedelta(minutes=batchrouter.settings.dispatch.stale_after_minutes)
    for swept in sweep(batchrouter.storage, batchrouter.settings, stale_after=stale):
        context.log.warning(f"released {swept['released_usd_micros']} micro-USD held by dead batch {swept['hold']}")


@dg.op
def reconcile_stripe(context: dg.OpExecutionContext, batchrouter: BatchRouterResource) -> None:
    """Credit paid Checkout Sessions the webhook missed (idempotent)."""
    import os

    from batchrouter.money.billing import reconcile
    from batchrouter.money.ledger import Ledger

    settings = batchrouter.settings
    if not os.environ.get(settings.billing.stripe_api_key_env):
        context.log.info(f"Stripe is not configured ({settings.billing.stripe_api_key_env} unset); nothing to do")
        return
    results = reconcile(settings, Ledger(settings.database))
    credited = [r for r in results if r.outcome == "credited"]
    context.log.info(f"{len(results)} checkout events seen, {len(credited)} newly credited")


@dg.job
def sweep_job() -> None:
    sweep_dead_runs()


@dg.job
def reconcile_job() -> None:
    reconcile_stripe()
