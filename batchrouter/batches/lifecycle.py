"""Batches: a submitted manifest and the files each stage writes for it under the storage root.

Each stage reads what the previous one wrote and writes its own file, so the CLI and the Dagster
assets run the very same functions and can resume from any stage.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any

import polars as pl

from batchrouter.access.accounts import Accounts
from batchrouter.batches import batch_lane
from batchrouter.batches.batch_lane import BatchLane
from batchrouter.batches.states import BatchState, check_transition, outcome
from batchrouter.core.batch_info import (
    BatchInfo,
    batch_id_for,
    check_run_tag,
    load_batch,
    now_iso,
)
from batchrouter.core.catalog import Catalog
from batchrouter.core.config import LanesConfig, Settings
from batchrouter.core.errors import BatchError, ManifestError
from batchrouter.core.identity import IdentityError, canonical_workspace
from batchrouter.core.storage import Storage, route_slug
from batchrouter.execution.checkpoint import Checkpoint, ItemResult, ItemStatus
from batchrouter.execution.dispatch import Dispatcher, Job, jobs_from_routed
from batchrouter.intake.manifest import Manifest, detect_format, read_manifest
from batchrouter.intake.quarantine import quarantine
from batchrouter.money.ledger import HoldStatus, Ledger
from batchrouter.output.receipts import FINAL_STATES, build_outputs
from batchrouter.pricing import lanes
from batchrouter.pricing.lanes import Lane
from batchrouter.pricing.quote import Quote, build_quote, reject_restricted, routed_items, with_lane_columns
from batchrouter.simulator import shared as shared_simulator

HEARTBEAT_S = 10.0
# A progress display redraws about ten times a second; a report per result costs CPU at the rate limit.
PROGRESS_EVERY_S = 0.1


def submit(
    storage: Storage,
    *,
    workspace: str,
    source_name: str,
    data: bytes,
    source_key: str | None = None,
    run_tag: str | None = None,
    deadline_s: float | None = None,
) -> BatchInfo:
    """Register a manifest as a batch (idempotent): keep its bytes and write `batch.json`.

    The same bytes submitted again to the same workspace, under any file name, return the existing
    batch (with the deadline it was given first). A new `run_tag` makes a new batch of the same bytes,
    on purpose. `deadline_s`: every item is to be answered within that many seconds of now.
    """
    try:
        workspace = canonical_workspace(workspace)
    except IdentityError as exc:
        raise BatchError(exc.message) from exc
    run_tag = check_run_tag(run_tag)
    sha = hashlib.sha256(data).hexdigest()
    name = posixpath.basename(source_name)
    batch_id = batch_id_for(workspace, sha, run_tag=run_tag)
    info = BatchInfo(batch_id, workspace, name, sha, now_iso(), source_key, run_tag, deadline_s)
    if storage.exists(*info.folder("batch.json")):
        return load_batch(storage, info.batch_id)
    storage.write_bytes(data, *info.folder("source", name))
    storage.write_json(asdict(info), *info.folder("batch.json"))
    return info


def stage_manifest(storage: Storage, settings: Settings, catalog: Catalog, info: BatchInfo) -> Manifest:
    """Parse and validate the batch's manifest into `manifest.parquet`; quarantine it if unusable."""
    data = storage.read_bytes(*info.folder("source", info.source_name))
    try:
        manifest = read_manifest(info.source_name, data, catalog=catalog, limits=settings.limits)
    except ManifestError as exc:
        report = quarantine(storage, workspace=info.workspace, source_name=info.source_name, data=data, error=exc)
        if info.source_key and storage.exists(info.source_key):
            # Dropped in the bucket: the quarantined copy replaces it, so it is moved, not duplicated.
            storage.fs.rm(storage.path(info.source_key))
        record_state(storage, info, BatchState.UNUSABLE_MANIFEST, settings.database, "batchrouter", error=str(exc),
                     problem=exc.problem, fix=exc.fix,
                     report=report, message=f"{exc} (the manifest and a report are kept at {report})")  # fmt: skip
        raise
    # Card numbers and credentials are rejected here (unless allowed), and their text is not written anywhere.
    policy = settings.workspace(info.workspace).policy
    items = reject_restricted(manifest.items.with_row_index("item"), policy=policy, redact=True).drop("item")
    manifest = Manifest(manifest.source, manifest.format, manifest.sha256, items)
    storage.write_parquet(manifest.items, *info.folder("manifest.parquet"))
    return manifest


def load_manifest(storage: Storage, info: BatchInfo) -> Manifest:
    items = storage.read_parquet(*info.folder("manifest.parquet"))
    with storage.fs.open(storage.path(*info.folder("source", info.source_name)), "rb") as f:
        head = f.read(64)
    return Manifest(info.source_name, detect_format(info.source_name, head), info.manifest_sha256, items)


def stage_quote(storage: Storage, settings: Settings, catalog: Catalog, info: BatchInfo, manifest: Manifest) -> Quote:
    """Price and route every item into `quote.parquet` and `quote.json`."""
    deadline_s = deadline_of(settings, info)
    quote = build_quote(manifest, workspace=info.workspace, catalog=catalog,
                        policy=settings.workspace(info.workspace).policy,
                        lanes=lane_chooser(storage, settings, catalog, deadline_s),
                        deadline_s=deadline_s)  # fmt: skip
    storage.write_parquet(quote.items, *info.folder("quote.parquet"))
    storage.write_json({**quote.summary(), "batch_id": info.batch_id}, *info.folder("quote.json"))
    record_state(storage, info, BatchState.QUOTED, settings.database, "batchrouter", quote_id=quote.quote_id)
    return quote


def lane_chooser(
    storage: Storage, settings: Settings, catalog: Catalog, deadline_s: float | None
) -> Callable[[pl.DataFrame], pl.DataFrame] | None:
    """The lane choice under `deadline_s` (None: no deadline, everything online), leaving each route's
    hedge room for the lines other batches have in flight on it that may hedge before its deadline."""
    if deadline_s is None:
        return None
    in_flight = batch_lane.lines_in_flight(storage, settings, within_s=deadline_s)
    return lanes.chooser(settings, catalog, deadline_s, in_flight=in_flight)


def deadline_of(settings: Settings, info: BatchInfo) -> float | None:
    """The batch's deadline (seconds after it was submitted): its own, else its workspace's default."""
    return settings.deadline_s(info.workspace, info.deadline_s)


def load_quote(storage: Storage, info: BatchInfo) -> Quote:
    summary = storage.read_json(*info.folder("quote.json"))
    return Quote(
        quote_id=summary["quote_id"],
        workspace=summary["workspace"],
        catalog_version=summary["catalog_version"],
        source=summary["source"],
        manifest_sha256=summary["manifest_sha256"],
        items=with_lane_columns(storage.read_parquet(*info.folder("quote.parquet"))),
        deadline_s=summary.get("deadline_s"),
    )


def stage_route(storage: Storage, info: BatchInfo, manifest: Manifest, quote: Quote) -> dict[str, int]:
    """Write accepted items partitioned by primary route; returns items per route."""
    items = routed_items(manifest, quote)
    storage.remove_tree(*info.folder("routed_items"))
    counts: dict[str, int] = {}
    for (route,), part in items.group_by("route", maintain_order=True):
        storage.write_parquet(part, *info.folder("routed_items", f"route={route_slug(str(route))}", "items.parquet"))
        counts[str(route)] = part.height
    return counts


def load_routed_items(storage: Storage, info: BatchInfo) -> pl.DataFrame:
    parts = [
        storage.read_parquet(*info.folder("routed_items", folder, "items.parquet"))
        for folder in storage.list(*info.folder("routed_items"))
    ]
    return pl.concat(parts) if parts else pl.DataFrame()


def _needs_simulator(settings: Settings, catalog: Catalog, routes: set[str]) -> bool:
    for route in routes:
        provider = settings.provider(catalog.entry(route).provider)
        if provider.kind == "simulator" and not provider.base_url:
            return True
    return False


def stage_dispatch(
    storage: Storage,
    settings: Settings,
    catalog: Catalog,
    info: BatchInfo,
    *,
    on_progress: Callable[[int, int, int, int], None] | None = None,
    simulator_url: str | None = None,
    on_heartbeat: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Send every routed item without a final result on its lane, then write outputs and receipts.

    Online and flex items are dispatched now; batch-lane items are collected from the provider batches
    that ended, hedged online when theirs will not make the deadline, and the rest submitted as provider
    batches (`batch_lane`): the batch then waits on its providers and a later call goes on.
    Safe to run again at any time: items with a final result in the checkpoint are skipped.
    """
    holds = Ledger(settings.database).batch_holds(info.batch_id)
    cancelled = _cancel_watch(storage, info)
    if not holds and not cancelled():  # cancelled before it was reserved: its items end as cancelled, unsent
        raise BatchError(f"batch {info.batch_id} has no reservation; reserve it before dispatching")
    hold_status = holds[-1].status if holds else None
    routed = load_routed_items(storage, info)
    checkpoint = Checkpoint(storage, info.batch_id, every_items=settings.dispatch.checkpoint_items)
    counts = {"succeeded": 0, "failed": 0}
    total = routed.height
    beat = [time.monotonic()]
    cost = [0]
    reported = [0.0]

    def report() -> None:
        if on_progress is not None:
            on_progress(counts["succeeded"], counts["failed"], total, cost[0])

    def record(result: ItemResult) -> None:
        checkpoint.add(result)
        counts[result.status] = counts.get(result.status, 0) + 1
        cost[0] += result.cost_usd_micros
        now = time.monotonic()
        if now - reported[0] >= PROGRESS_EVERY_S:
            reported[0] = now
            report()
        # A heartbeat: the sweeper treats a batch whose status stopped moving as a dead run.
        if now - beat[0] > HEARTBEAT_S:
            beat[0] = time.monotonic()
            if on_heartbeat is not None:
                on_heartbeat()  # the run's lease: it is alive
            if current_state(storage, info) == BatchState.DISPATCHING:
                record_state(storage, info, BatchState.DISPATCHING, None, "batchrouter", items=total, **counts)

    health: list[dict[str, Any]] = []
    started, cpu_started = time.monotonic(), time.process_time()
    try:
        url = simulator_url
        if url is None and _needs_simulator(settings, catalog, _routes_to_reach(storage, info, routed, checkpoint)):
            url = shared_simulator.url_for(settings.database, settings.simulator)
        # The lane finds the simulator that holds each provider batch itself (`BatchLane._client`).
        lane = BatchLane(storage, settings, catalog, info, simulator_url=simulator_url, record=record,
                         flush=checkpoint.flush)  # fmt: skip
        if storage.exists(*info.folder(batch_lane.FOLDER)):
            lane.refresh(cancel_all=cancelled())  # collect what ended, hedge what is late
            checkpoint.flush()
        done = checkpoint.load()
        counts["succeeded"] = int((done["status"] == ItemStatus.SUCCEEDED).sum())
        counts["failed"] = int((done["status"] == ItemStatus.FAILED).sum())
        cost[0] = int(done["cost_usd_micros"].sum() or 0)
        todo = routed.filter(~pl.col("item_id").is_in(done["item_id"].implode())) if routed.height else routed
        online, to_submit, waiting = lane.split(todo)
        if (online.height or to_submit.height) and hold_status != HoldStatus.HELD and not cancelled():
            raise BatchError(
                f"batch {info.batch_id}'s reservation is {hold_status}; "
                f"{online.height + to_submit.height} items cannot be sent without one"
            )
        # A reserved round with nothing left to send (a run died after dispatching) still passes through
        # dispatching, so settling it may end the batch.
        state = current_state(storage, info)
        if (online.height or to_submit.height or state == BatchState.RESERVED) and not cancelled():
            record_state(storage, info, BatchState.DISPATCHING, settings.database, "batchrouter", items=total,
                         remaining=online.height + to_submit.height + waiting, **counts)  # fmt: skip
        if to_submit.height and not cancelled():
            # Lines a provider refused go online now; lines held back for capacity wait for the next round.
            refused = lane.submit(to_submit, {job.item_id: job for job in _jobs(to_submit, info, settings.lanes)})
            online = pl.concat([online, to_submit.filter(pl.col("item_id").is_in(list(refused)))],
                               how="vertical_relaxed")  # fmt: skip
        elif to_submit.height:
            # Cancelled before its provider batches were made: the dispatcher ends these lines cancelled,
            # unsent, so the batch can settle (left unsubmitted, they would keep it open for ever).
            online = pl.concat([online, to_submit], how="vertical_relaxed")
        dispatcher = Dispatcher(
            settings=settings,
            catalog=catalog,
            policy=settings.workspace(info.workspace).policy,
            on_result=record,
            simulator_url=url,
            cancelled=cancelled,
        )
        asyncio.run(dispatcher.run(_jobs(online, info, settings.lanes), online.height))
        health = [r.health.row() for r in dispatcher.routes.values()]
        in_flight, unsent = lane.waiting_items(todo) if not cancelled() else (0, 0)
        held = in_flight + unsent
        # Held back for capacity round after round: each look waits longer (as polls do).
        polls = batch_lane.looks_of(storage, info.batch_id) + 1 if unsent else 0
        hedges = batch_lane.hedges_in_flight(storage, settings, info) if held else None
        batch_lane.mark_waiting(storage, info, lane.next_poll_wall(polls, unsent=unsent) if held else None,
                                polls=polls, unsent=unsent, in_flight=hedges)  # fmt: skip
    finally:
        checkpoint.flush()
    report()  # the last results, which the throttle may have held back
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
    if health:
        # run_cpu_seconds: this process's CPU for the whole dispatch, what the online lane's cost is judged by.
        frame = pl.DataFrame(health).with_columns(
            pl.lit(now_iso()).alias("run_at"),
            pl.lit(elapsed).alias("run_seconds"),
            pl.lit(cpu).alias("run_cpu_seconds"),
        )
        storage.write_parquet(frame, *info.folder("dispatch", f"health-{time.time_ns()}.parquet"))
    summary = write_results(storage, info)
    if held and current_state(storage, info) != BatchState.WAITING_ON_PROVIDER:
        record_state(storage, info, BatchState.WAITING_ON_PROVIDER, settings.database, "batchrouter", items=total,
                     waiting=held, succeeded=summary["succeeded"], failed=summary["failed"],
                     message=f"{held} items are in provider batches, collected as the providers answer")  # fmt: skip
    return summary


def _routes_to_reach(storage: Storage, info: BatchInfo, routed: pl.DataFrame, checkpoint: Checkpoint) -> set[str]:
    """Routes this round may call: those of items without an answer (and their fallbacks), and of open
    provider batches."""
    done = checkpoint.load()
    todo = routed.filter(~pl.col("item_id").is_in(done["item_id"].implode())) if routed.height else routed
    routes = set(todo["route"]) | set(todo["fallbacks"].explode().drop_nulls()) if todo.height else set()
    if storage.exists(*info.folder(batch_lane.FOLDER)):
        routes |= {sent["route"] for sent in batch_lane.open_sent(storage, info)}
    return routes


def _jobs(items: pl.DataFrame, info: BatchInfo, config: LanesConfig) -> Iterator[Job]:
    """The dispatcher's jobs for routed items, made as they are taken; a flex-lane item asks for
    `service_tier: "flex"`, and one refused for capacity asks again on flex until its hedge time (on the
    wall), if it has one."""
    if not items.height:
        return
    flex: dict[str, Any] = {}
    if "lane" in items.columns:
        hedge = pl.col("hedge_at_s") if "hedge_at_s" in items.columns else pl.lit(None, dtype=pl.Float64)
        flex = dict(items.filter(pl.col("lane") == str(Lane.FLEX)).select("item_id", hedge).iter_rows())
    started = datetime.fromisoformat(info.submitted_at).timestamp() if flex else 0.0
    for job in jobs_from_routed(items):
        if job.item_id in flex:
            job.request = replace(job.request, params={**(job.request.params or {}), "service_tier": "flex"})
            hedge_at = flex[job.item_id]
            job.flex_until = None if hedge_at is None else started + config.wall_s(float(hedge_at))
        yield job


def _cancel_watch(storage: Storage, info: BatchInfo, every_s: float = 1.0) -> Callable[[], bool]:
    """True once `cancel.json` exists beside the batch (looked for at most once a second)."""
    state = {"checked": 0.0, "cancelled": False}

    def cancelled() -> bool:
        if not state["cancelled"] and time.monotonic() - state["checked"] >= every_s:
            state["checked"] = time.monotonic()
            state["cancelled"] = storage.exists(*info.folder("cancel.json"))
        return bool(state["cancelled"])

    return cancelled


def write_results(storage: Storage, info: BatchInfo) -> dict[str, Any]:
    """Write `outputs.parquet` and `receipts.parquet` from the checkpoint; returns the run summary."""
    quote = load_quote(storage, info)
    manifest = load_manifest(storage, info)
    results = Checkpoint(storage, info.batch_id).load()
    outputs, receipts = build_outputs(
        quote.items, manifest.items, results, batch_id=info.batch_id, workspace=info.workspace
    )
    outputs_url, receipts_url = storage.write_parquets(
        [(outputs, info.folder("outputs.parquet")), (receipts, info.folder("receipts.parquet"))]
    )
    return dispatch_summary(info, receipts, results, outputs_url=outputs_url, receipts_url=receipts_url)


def dispatch_summary(
    info: BatchInfo, receipts: pl.DataFrame, results: pl.DataFrame, *, outputs_url: str, receipts_url: str
) -> dict[str, Any]:
    by_status = dict(receipts.group_by("status").len().iter_rows())
    succeeded, failed = int(by_status.get("succeeded", 0)), int(by_status.get("failed", 0))
    pending = int(by_status.get("pending", 0))
    status = "completed" if not pending else "incomplete"
    if status == "completed" and failed and not succeeded:
        status = "failed"
    ok = results.filter(pl.col("status") == ItemStatus.SUCCEEDED)
    by_route = (
        receipts.filter(pl.col("status").is_in([ItemStatus.SUCCEEDED, ItemStatus.FAILED]))
        .group_by("route", "provider", "model")
        .agg(
            pl.len().alias("items"),
            (pl.col("status") == ItemStatus.SUCCEEDED).sum().alias("succeeded"),
            pl.col("input_tokens").sum(),
            pl.col("output_tokens").sum(),
            pl.col("cost_usd_micros").sum(),
            pl.col("reserve_usd_micros").sum(),
        )
        .sort("route")
    )
    latency = ok["latency_ms"].cast(pl.Float64)
    return {
        "batch_id": info.batch_id,
        "workspace": info.workspace,
        "status": status,
        "items": receipts.height,
        "succeeded": succeeded,
        "failed": failed,
        "rejected": int(by_status.get("rejected", 0)),
        "pending": pending,
        "reserve_usd_micros": int(receipts["reserve_usd_micros"].sum() or 0),
        "cost_usd_micros": int(receipts["cost_usd_micros"].sum() or 0),
        "retries": int((results["attempts"] - 1).clip(lower_bound=0).sum() or 0),
        "rate_limited": int(results["rate_limited"].sum() or 0),
        "latency_p50_ms": float(latency.quantile(0.5) or 0.0) if ok.height else None,
        "latency_p95_ms": float(latency.quantile(0.95) or 0.0) if ok.height else None,
        "by_route": by_route.to_dicts(),
        "failures": results.filter(pl.col("status") == ItemStatus.FAILED)
        .group_by("error_code")
        .len()
        .sort("error_code")
        .to_dicts(),
        "outputs": outputs_url,
        "receipts": receipts_url,
    }


STATUS = "status.json"


def current_state(storage: Storage, info: BatchInfo) -> BatchState:
    """The batch's state as persisted in `status.json` (`submitted` until a stage records one).

    A batch settled before there was a state machine (status `settled`) is in the outcome its receipts say.
    """
    if not storage.exists(*info.folder(STATUS)):
        return BatchState.SUBMITTED
    raw = str(storage.read_json(*info.folder(STATUS))["status"])
    if raw == "settled":
        by_status = dict(storage.read_parquet(*info.folder("receipts.parquet")).group_by("status").len().iter_rows())
        return outcome(succeeded=int(by_status.get(ItemStatus.SUCCEEDED, 0)),
                       failed=int(by_status.get(ItemStatus.FAILED, 0)), pending=0,
                       rejected=int(by_status.get(ItemStatus.REJECTED, 0)), cancelled=False)  # fmt: skip
    return BatchState(raw)


def record_state(
    storage: Storage,
    info: BatchInfo,
    state: BatchState,
    audit_to: str | None = None,
    actor: str = "batchrouter",
    /,
    **details: Any,
) -> dict[str, Any]:
    """Move the batch to `state` (checked against the state machine) and persist it in `status.json`.

    A change of state is audited (`batch.state`) in the database `audit_to`; staying in a state (a
    dispatch heartbeat, new details) is not.

    Raises:
        IllegalTransition: `state` may not follow the batch's current state; nothing is written.
    """
    previous = current_state(storage, info)
    check_transition(info.batch_id, previous, state)
    record = {"batch_id": info.batch_id, "workspace": info.workspace, "status": str(state), "at": now_iso(), **details}
    storage.write_json(record, *info.folder(STATUS))
    if audit_to is not None and previous != state:
        Accounts(audit_to).record(info.workspace, actor, "batch.state", info.batch_id,
                                  before={"state": str(previous)}, after={"state": str(state)})  # fmt: skip
    return record


def accounting(storage: Storage, info: BatchInfo) -> dict[str, Any]:
    """Every manifest row appears exactly once in the receipts, in a final state."""
    manifest_rows = storage.read_parquet(*info.folder("manifest.parquet")).height
    receipts = storage.read_parquet(*info.folder("receipts.parquet"))
    final = receipts.filter(pl.col("status").is_in(list(FINAL_STATES))).height
    ids = receipts.filter(pl.col("status").is_in([ItemStatus.SUCCEEDED, ItemStatus.FAILED]))["item_id"]
    return {
        "ok": receipts.height == manifest_rows == final and ids.n_unique() == ids.len(),
        "manifest_rows": manifest_rows,
        "receipts": receipts.height,
        "final": final,
        "duplicate_ids": ids.len() - ids.n_unique(),
    }
