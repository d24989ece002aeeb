"""A batch as three assets, one partition per batch: `quote` -> `outputs` -> `settlement`.

One step makes all three: it asks the engine to advance the batch (`engine.batches.advance`: quote
and reserve if not yet, dispatch every item without an answer, write outputs and receipts, settle
once). Running it again is safe and does only what is left (a new round for failed items).

What a run says about its batch. The run's tag `batchrouter/state` is the batch's state afterwards
(batchrouter.batches.states.BatchState); the run fails when the batch cannot go on until someone
fixes something, and succeeds when the batch is where it should be:

    state                 run      materialised                 checks (per partition)
    completed             success  quote, outputs, settlement   all pass
    partially_failed      success  quote, outputs, settlement   outputs: no_failed_items fails (warn);
                                                                re-execute the partition to retry them
    cancelled             success  quote (+ outputs, settlement for items answered before the cancel)
    waiting_on_provider   success  quote (with lanes, provider     none yet: the provider-batch sensor runs
                                   batches, time to the deadline)  the partition again as providers answer
    awaiting_approval     success  quote                        quote: approved_and_funded fails (warn);
                                                                the approval sensor resumes it
    insufficient_credits  failure  quote                        quote: approved_and_funded fails
    failed, expired       failure  quote, outputs, settlement   outputs: no_failed_items fails
    unusable_manifest     failure  nothing (quarantined with a report)

Checks are partitioned like their assets, so one batch's failure never shows on another's partition.
"""

import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg

from assets.metadata import table, usd
from batchrouter.access.actors import DAGSTER
from batchrouter.batches import lifecycle
from batchrouter.batches.leases import owner_name
from batchrouter.batches.results import BatchView, Progress, QuoteSummary, RunSummary
from batchrouter.batches.states import BatchState
from batchrouter.core.errors import BatchRouterError
from pipelines.partitions import batches
from pipelines.resources import BatchRouterResource

STATE_TAG = "batchrouter/state"
# The run worker doing the step (host and pid: `leases.owner_name`), so `dead_run_sensor` can tell a run
# whose worker was killed, which the default run launcher leaves started for ever.
WORKER_TAG = "batchrouter/worker"
# The batch cannot go on until someone acts: the run fails (and a run-failure alert fires).
FAILS_THE_RUN = frozenset(
    {BatchState.INSUFFICIENT_CREDITS, BatchState.FAILED, BatchState.EXPIRED, BatchState.UNUSABLE_MANIFEST}
)
# Held at the gate, and how loud the quote's check says so.
_HELD = {
    BatchState.AWAITING_APPROVAL: dg.AssetCheckSeverity.WARN,
    BatchState.INSUFFICIENT_CREDITS: dg.AssetCheckSeverity.ERROR,
}
# The engine refusing to go on is expected here: the run succeeds (it waits for an approver, or was stopped).
_EXPECTED_STOP = frozenset({BatchState.AWAITING_APPROVAL, BatchState.CANCELLED})

with warnings.catch_warnings():
    # Checks per partition are a preview feature of Dagster; they are what keeps batches apart.
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECKS = [
        dg.AssetCheckSpec("approved_and_funded", asset="quote", partitions_def=batches,
                          description="The quote is approved (by the limit or a person) and its reservation held."),
        dg.AssetCheckSpec("every_item_accounted_once", asset="outputs", partitions_def=batches,
                          description="Every manifest row has exactly one receipt, in a final state."),
        dg.AssetCheckSpec("no_failed_items", asset="outputs", partitions_def=batches,
                          description="No item failed (a failed item is retried by re-executing the partition)."),
        dg.AssetCheckSpec("ledger_matches_receipts", asset="settlement", partitions_def=batches,
                          description="The ledger captured exactly what the receipts add up to."),
        dg.AssetCheckSpec("reserve_covers_actual", asset="settlement", partitions_def=batches,
                          description="What the items cost stayed within what the quote reserved."),
    ]  # fmt: skip


@dg.multi_asset(
    specs=[
        dg.AssetSpec("quote", kinds={"polars"}, description="The manifest validated, priced and routed."),
        dg.AssetSpec("outputs", deps=["quote"], kinds={"parquet"}, description="outputs.parquet and receipts."),
        dg.AssetSpec("settlement", deps=["outputs"], kinds={"duckdb"}, description="The batch's holds settled."),
    ],
    check_specs=CHECKS,
    partitions_def=batches,
    group_name="batch",
    can_subset=True,  # a batch held at the gate materialises its quote only
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    pool="batchrouter/dispatch",
)
def batch(context: dg.AssetExecutionContext, batchrouter: BatchRouterResource) -> Iterator[Any]:
    """Advance the batch: quote, reserve, dispatch, write outputs and receipts, settle."""
    engine, batch_id = batchrouter.engine(), context.partition_key
    context.instance.add_run_tags(context.run.run_id, {WORKER_TAG: worker_name(context.run.run_id)})
    run: RunSummary | None = None
    refusal: BatchRouterError | None = None
    try:
        run = engine.batches.advance(batch_id, actor=DAGSTER, on_progress=_progress_log(context))
    except BatchRouterError as exc:
        if exc.retryable:
            raise  # the retry policy runs the step again
        refusal = exc
    view = engine.batches.status(batch_id)
    context.instance.add_run_tags(context.run.run_id, {STATE_TAG: str(view.state)})
    if view.quote is not None:
        yield from _quote(engine.storage.read_json(*engine.batches.info(batch_id).folder("quote.json")), view, refusal)
    if run is not None and run.items and view.state != BatchState.WAITING_ON_PROVIDER:
        yield from _outputs(run, lifecycle.accounting(engine.storage, engine.batches.info(batch_id)))
        if run.settlement is not None:
            yield from _settlement(run.settlement, view)
    if view.state in FAILS_THE_RUN or (refusal is not None and view.state not in _EXPECTED_STOP):
        reason = refusal if run is None else f"no item succeeded ({_failures(run)})"
        raise dg.Failure(description=f"batch {batch_id} is {view.state}: {reason}", allow_retries=False)


def worker_name(run_id: str) -> str:
    """The `WORKER_TAG` of run `run_id` done in this process: it names the run, so a retry (which copies
    its parent's tags) is not taken for its parent until its own step has named itself."""
    return owner_name(f"dagster run {run_id}")


def _quote(summary: dict[str, Any], view: BatchView, refusal: BatchRouterError | None) -> Iterator[Any]:
    quote = QuoteSummary.model_validate(summary)
    yield dg.MaterializeResult(
        asset_key="quote",
        metadata=_lanes(quote, view) | {
            "accepted": quote.accepted,
            "rejected": quote.rejected,
            "reserve": usd(quote.reserve_usd_micros),
            "expected": usd(quote.expected_usd_micros),
            "catalog_version": quote.catalog_version,
            "by_route": table(
                [
                    r.model_dump() | {"reserve": usd(r.reserve_usd_micros), "expected": usd(r.expected_usd_micros)}
                    for r in quote.by_route
                ],
                {"route": str, "items": int, "input_tokens": int, "expected": str, "reserve": str},
            ),  # fmt: skip
            "rejections": table(
                (r.model_dump() for r in quote.rejections[:50]), {"row": int, "field": str, "reason": str}
            ),  # fmt: skip
        },
    )
    yield dg.AssetCheckResult(
        asset_key="quote",
        check_name="approved_and_funded",
        passed=view.state not in _HELD,
        severity=_HELD.get(view.state, dg.AssetCheckSeverity.ERROR),
        description=str(refusal or view.message) if view.state in _HELD else None,
        metadata={"state": str(view.state)},
    )


def _lanes(quote: QuoteSummary, view: BatchView) -> dict[str, Any]:
    """Per lane: items, answered, waiting, hedged; the provider batches; the time left to the deadline."""
    extra = view.model_extra or {}
    out: dict[str, Any] = {}
    if quote.by_lane:
        out["by_lane"] = table(
            [r.model_dump() | {"expected": usd(r.expected_usd_micros), "saving": usd(r.saving_usd_micros)}
             for r in quote.by_lane],
            {"route": str, "lane": str, "items": int, "expected": str, "saving": str},
        )  # fmt: skip
    if extra.get("lanes"):
        columns = {"lane": str, "items": int, "answered": int, "waiting": int, "hedged": int}
        out["lanes"] = table(extra["lanes"], columns)
    if extra.get("provider_batches"):
        out["provider_batches"] = table(
            extra["provider_batches"], {"provider": str, "provider_batch_id": str, "status": str, "state": str,
                                        "lines": int},
        )  # fmt: skip
    if extra.get("time_left_s") is not None:
        out["deadline"] = str(extra["deadline_at"])
        out["time_left_s"] = float(extra["time_left_s"])
    return out


def _outputs(run: RunSummary, accounted: dict[str, Any]) -> Iterator[Any]:
    yield dg.MaterializeResult(
        asset_key="outputs",
        metadata={
            "state": str(run.state),
            "succeeded": run.succeeded,
            "failed": run.failed,
            "rejected": run.rejected,
            "pending": run.pending,
            "cost": usd(run.cost_usd_micros),
            "latency_p50_ms": run.latency_p50_ms or 0.0,
            "latency_p95_ms": run.latency_p95_ms or 0.0,
            "by_route": table(
                [
                    r | {"cost": usd(r["cost_usd_micros"]), "reserve": usd(r["reserve_usd_micros"])}
                    for r in run.by_route
                ],
                {"route": str, "items": int, "succeeded": int, "output_tokens": int, "cost": str, "reserve": str},
            ),
            "failures": table(run.failures, {"error_code": str, "len": int}),
            "outputs": dg.MetadataValue.path(run.outputs),
            "receipts": dg.MetadataValue.path(run.receipts),
        },
    )
    yield dg.AssetCheckResult(
        asset_key="outputs", check_name="every_item_accounted_once", passed=bool(accounted["ok"]), metadata=accounted
    )
    yield dg.AssetCheckResult(
        asset_key="outputs",
        check_name="no_failed_items",
        passed=run.failed == 0,
        severity=dg.AssetCheckSeverity.ERROR if run.failed and not run.succeeded else dg.AssetCheckSeverity.WARN,
        metadata={"failed": run.failed, "failures": table(run.failures, {"error_code": str, "len": int})},
    )


def _settlement(settled: dict[str, Any], view: BatchView) -> Iterator[Any]:
    captured, receipts = settled["captured_usd_micros"], settled["receipts_usd_micros"]
    reserved = settled["reserved_usd_micros"]
    yield dg.MaterializeResult(
        asset_key="settlement",
        metadata={
            "captured": usd(captured),
            "reserved": usd(reserved),
            "released": usd(reserved - captured),
            "holds": table(
                [
                    h.model_dump() | {"reserved": usd(h.reserved_usd_micros), "captured": usd(h.captured_usd_micros)}
                    for h in view.holds
                ],
                {"hold": str, "status": str, "reserved": str, "captured": str},
            ),  # fmt: skip
        },
    )
    yield dg.AssetCheckResult(
        asset_key="settlement",
        check_name="ledger_matches_receipts",
        passed=captured == receipts,
        metadata={"captured": usd(captured), "receipts": usd(receipts)},
    )
    yield dg.AssetCheckResult(
        asset_key="settlement",
        check_name="reserve_covers_actual",
        passed=receipts <= reserved,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"reserved": usd(reserved), "actual": usd(receipts)},
    )


def _failures(run: RunSummary) -> str:
    return ", ".join(f"{f['len']} x {f['error_code']}" for f in run.failures) or "no answers"


def _progress_log(context: dg.AssetExecutionContext, every_s: float = 5.0) -> Callable[[Progress], None]:
    last = [0.0]

    def log(progress: Progress) -> None:
        if time.monotonic() - last[0] >= every_s or progress.succeeded + progress.failed == progress.total:
            last[0] = time.monotonic()
            context.log.info(f"{progress.succeeded + progress.failed}/{progress.total} items answered "
                             f"({progress.failed} failed), {usd(progress.cost_usd_micros)} so far")  # fmt: skip

    return log
