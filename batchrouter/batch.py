"""Batches: a submitted manifest and the files each stage writes for it under the storage root.

Each stage reads what the previous one wrote and writes its own file, so the CLI and the Dagster
assets run the very same functions and can resume from any stage.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import polars as pl

from batchrouter.catalog import Catalog
from batchrouter.config import Settings
from batchrouter.errors import BatchError, ManifestError
from batchrouter.manifest import Manifest, read_manifest
from batchrouter.quote import Quote, build_quote, routed_items
from batchrouter.storage import Storage, route_slug

BATCHES = "batches"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class BatchInfo:
    """What `batch.json` records about a batch."""

    batch_id: str
    workspace: str
    source_name: str
    manifest_sha256: str
    submitted_at: str

    def folder(self, *parts: str) -> tuple[str, ...]:
        return (BATCHES, self.batch_id, *parts)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def batch_id_for(workspace: str, source_name: str, sha256: str) -> str:
    """Deterministic: the same manifest bytes submitted to the same workspace are the same batch."""
    stem = posixpath.basename(source_name).rsplit(".", 1)[0]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{workspace}-{stem}".lower()).strip("-")[:48]
    return f"{slug}-{sha256[:10]}"


def submit(storage: Storage, *, workspace: str, source_name: str, data: bytes) -> BatchInfo:
    """Register a manifest as a batch (idempotent): keep its bytes and write `batch.json`."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", workspace):
        raise BatchError(f"workspace {workspace!r} is not a valid name: use letters, digits, '-', '_' or '.'")
    sha = hashlib.sha256(data).hexdigest()
    name = posixpath.basename(source_name)
    info = BatchInfo(batch_id_for(workspace, name, sha), workspace, name, sha, _now())
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
    name = f"{stamp}-{posixpath.basename(source_name)}"
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
        storage.write_json(
            {"status": "unusable_manifest", "error": str(exc), "report": report, "at": _now()},
            *info.folder("status.json"),
        )
        raise
    storage.write_parquet(manifest.items, *info.folder("manifest.parquet"))
    return manifest


def load_manifest(storage: Storage, info: BatchInfo) -> Manifest:
    from batchrouter.manifest import detect_format

    items = storage.read_parquet(*info.folder("manifest.parquet"))
    return Manifest(info.source_name, detect_format(info.source_name, b""), info.manifest_sha256, items)


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
