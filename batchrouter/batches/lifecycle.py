"""Batches: a submitted manifest and the files each stage writes for it under the storage root.

Each stage reads what the previous one wrote and writes its own file, so the CLI and the Dagster
assets run the very same functions and can resume from any stage.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from batchrouter.core.config import Settings
from batchrouter.core.errors import BatchError, ManifestError
from batchrouter.core.identity import IdentityError, canonical_workspace
from batchrouter.core.storage import Storage, route_slug
from batchrouter.execution.dispatch import Dispatcher, jobs_from_routed
from batchrouter.intake.manifest import Manifest, detect_format, read_manifest
from batchrouter.money.ledger import Ledger
from batchrouter.output.receipts import FINAL_STATES, Checkpoint, ItemResult, build_outputs
from batchrouter.pricing.catalog import Catalog
from batchrouter.pricing.quote import Quote, build_quote, reject_restricted, routed_items
from batchrouter.simulator import running_simulator

BATCHES = "batches"
QUARANTINE = "quarantine"
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class BatchInfo:
    """What `batch.json` records about a batch."""

    batch_id: str
    workspace: str
    source_name: str
    manifest_sha256: str
    submitted_at: str
    source_key: str | None = None  # where it was dropped in the bucket, if it came that way
    run_tag: str | None = None  # set when the same bytes were run again on purpose

    def folder(self, *parts: str) -> tuple[str, ...]:
        return (BATCHES, self.batch_id, *parts)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


BATCH_DIGEST_CHARS = 24
_RUN_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def batch_id_for(workspace: str, sha256: str, *, run_tag: str | None = None) -> str:
    """`<workspace>-<24 hex>`: the same bytes in the same workspace (and run tag) are the same batch.

    The file's name plays no part, so a renamed copy is the same batch and is not charged twice.
    The workspace is spelled out in full and the digest has a fixed length, so the id can be split
    back into both: two different workspaces can never share a batch id.
    """
    material = f"{workspace}\n{sha256}\n{run_tag or ''}".encode()
    return f"{workspace}-{hashlib.sha256(material).hexdigest()[:BATCH_DIGEST_CHARS]}"


def check_run_tag(run_tag: str | None) -> str | None:
    """A run tag names a deliberate re-run of the same bytes; None or empty means no tag."""
    if not run_tag:
        return None
    if not _RUN_TAG.fullmatch(run_tag) or "--" in run_tag:
        raise BatchError(
            f"run tag {run_tag!r} is not valid: use 1 to 64 letters, digits, '-', '_' or '.', "
            "without '--' (e.g. 2026-12-01-retry)"
        )
    return run_tag


def submit(
    storage: Storage,
    *,
    workspace: str,
    source_name: str,
    data: bytes,
    source_key: str | None = None,
    run_tag: str | None = None,
) -> BatchInfo:
    """Register a manifest as a batch (idempotent): keep its bytes and write `batch.json`.

    The same bytes submitted again to the same workspace, under any file name, return the existing
    batch. A new `run_tag` makes a new batch of the same bytes, on purpose.
    """
    try:
        workspace = canonical_workspace(workspace)
    except IdentityError as exc:
        raise BatchError(exc.message) from exc
    run_tag = check_run_tag(run_tag)
    sha = hashlib.sha256(data).hexdigest()
    name = posixpath.basename(source_name)
    batch_id = batch_id_for(workspace, sha, run_tag=run_tag)
    info = BatchInfo(batch_id, workspace, name, sha, _now(), source_key, run_tag)
    if storage.exists(*info.folder("batch.json")):
        return load_batch(storage, info.batch_id)
    storage.write_bytes(data, *info.folder("source", name))
    storage.write_json(asdict(info), *info.folder("batch.json"))
    return info


def load_batch(storage: Storage, batch_id: str) -> BatchInfo:
    if not storage.exists(BATCHES, batch_id, "batch.json"):
        raise BatchError(f"batch {batch_id!r} does not exist under {storage.url(BATCHES)}")
    return BatchInfo(**storage.read_json(BATCHES, batch_id, "batch.json"))


def quarantine(storage: Storage, *, workspace: str, source_name: str, data: bytes, error: ManifestError) -> str:
    """Keep an unusable manifest with a human-readable report beside it; returns the report's URL."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # The digest keeps two different files quarantined in the same second apart.
    name = f"{stamp}-{hashlib.sha256(data).hexdigest()[:8]}-{posixpath.basename(source_name)}"
    storage.write_bytes(data, QUARANTINE, workspace, name)
    report = (
        f"Manifest: {source_name}\nWorkspace: {workspace}\nQuarantined: {stamp}\n\n"
        f"Problem: {error.problem}\nWhat to do: {error.fix}\n\n"
        "The file beside this report is the manifest exactly as received. Fix it and submit it again.\n"
    )
    return storage.write_bytes(report.encode(), QUARANTINE, workspace, f"{name}.error.txt")


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
        storage.write_json(
            {"status": "unusable_manifest", "error": str(exc), "report": report, "at": _now()},
            *info.folder("status.json"),
        )
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
    quote = build_quote(
        manifest, workspace=info.workspace, catalog=catalog, policy=settings.workspace(info.workspace).policy
    )
    storage.write_parquet(quote.items, *info.folder("quote.parquet"))
    storage.write_json({**quote.summary(), "batch_id": info.batch_id}, *info.folder("quote.json"))
    return quote


def load_quote(storage: Storage, info: BatchInfo) -> Quote:
    summary = storage.read_json(*info.folder("quote.json"))
    return Quote(
        quote_id=summary["quote_id"],
        workspace=summary["workspace"],
        catalog_version=summary["catalog_version"],
        source=summary["source"],
        manifest_sha256=summary["manifest_sha256"],
        items=storage.read_parquet(*info.folder("quote.parquet")),
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
    on_progress: Callable[[int, int, int], None] | None = None,
    simulator_url: str | None = None,
) -> dict[str, Any]:
    """Dispatch every routed item without a final result, then write outputs and receipts.

    Safe to run again at any time: items with a final result in the checkpoint are skipped.
    """
    holds = Ledger(settings.database).batch_holds(info.batch_id)
    if not holds:
        raise BatchError(f"batch {info.batch_id} has no reservation; reserve it before dispatching")
    hold = holds[-1]
    routed = load_routed_items(storage, info)
    checkpoint = Checkpoint(storage, info.batch_id, every_items=settings.dispatch.checkpoint_items)
    done = checkpoint.load()
    todo = routed.filter(~pl.col("item_id").is_in(done["item_id"].implode())) if routed.height else routed
    jobs = jobs_from_routed(todo) if todo.height else []
    counts = {
        "succeeded": int((done["status"] == "succeeded").sum()),
        "failed": int((done["status"] == "failed").sum()),
    }
    total = routed.height
    cancelled = _cancel_watch(storage, info)
    if jobs and hold.status != "held" and not cancelled():
        raise BatchError(
            f"batch {info.batch_id}'s reservation is {hold.status}; {len(jobs)} items cannot be dispatched without one"
        )
    if jobs:
        set_status(storage, info, "dispatching", items=total, remaining=len(jobs), **counts)
    beat = [time.monotonic()]

    def record(result: ItemResult) -> None:
        checkpoint.add(result)
        counts[result.status] = counts.get(result.status, 0) + 1
        if on_progress is not None:
            on_progress(counts["succeeded"], counts["failed"], total)
        # A heartbeat: the sweeper treats a batch whose status stopped moving as a dead run.
        if time.monotonic() - beat[0] > HEARTBEAT_S:
            beat[0] = time.monotonic()
            set_status(storage, info, "dispatching", items=total, **counts)

    routes = {r for job in jobs for r in job.chain}
    health: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            url = simulator_url
            if url is None and _needs_simulator(settings, catalog, routes):
                url = stack.enter_context(running_simulator(settings.simulator))
            dispatcher = Dispatcher(
                settings=settings,
                catalog=catalog,
                policy=settings.workspace(info.workspace).policy,
                on_result=record,
                simulator_url=url,
                cancelled=cancelled,
            )
            asyncio.run(dispatcher.run(jobs))
            health = [r.health.row() for r in dispatcher.routes.values()]
    finally:
        checkpoint.flush()
    elapsed = time.monotonic() - started
    if health:
        frame = pl.DataFrame(health).with_columns(pl.lit(_now()).alias("run_at"), pl.lit(elapsed).alias("run_seconds"))
        storage.write_parquet(frame, *info.folder("dispatch", f"health-{time.time_ns()}.parquet"))
    return write_results(storage, info)


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
    outputs_url = storage.write_parquet(outputs, *info.folder("outputs.parquet"))
    receipts_url = storage.write_parquet(receipts, *info.folder("receipts.parquet"))
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
    ok = results.filter(pl.col("status") == "succeeded")
    by_route = (
        receipts.filter(pl.col("status").is_in(["succeeded", "failed"]))
        .group_by("route", "provider", "model")
        .agg(
            pl.len().alias("items"),
            (pl.col("status") == "succeeded").sum().alias("succeeded"),
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
        "failures": results.filter(pl.col("status") == "failed")
        .group_by("error_code")
        .len()
        .sort("error_code")
        .to_dicts(),
        "outputs": outputs_url,
        "receipts": receipts_url,
    }


def set_status(storage: Storage, info: BatchInfo, status: str, **details: Any) -> dict[str, Any]:
    """Record the batch's current state in `status.json` (what `batchrouter status` shows)."""
    record = {"batch_id": info.batch_id, "workspace": info.workspace, "status": status, "at": _now(), **details}
    storage.write_json(record, *info.folder("status.json"))
    return record


def accounting(storage: Storage, info: BatchInfo) -> dict[str, Any]:
    """Every manifest row appears exactly once in the receipts, in a final state."""
    manifest_rows = storage.read_parquet(*info.folder("manifest.parquet")).height
    receipts = storage.read_parquet(*info.folder("receipts.parquet"))
    final = receipts.filter(pl.col("status").is_in(list(FINAL_STATES))).height
    ids = receipts.filter(pl.col("status").is_in(["succeeded", "failed"]))["item_id"]
    return {
        "ok": receipts.height == manifest_rows == final and ids.n_unique() == ids.len(),
        "manifest_rows": manifest_rows,
        "receipts": receipts.height,
        "final": final,
        "duplicate_ids": ids.len() - ids.n_unique(),
    }
