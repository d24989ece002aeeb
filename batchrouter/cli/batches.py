"""Batch commands: quote, submit, run, approve, status."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Annotated

import typer

from batchrouter.cli.common import (
    EXIT_NOTHING_ACCEPTED,
    EXIT_OK,
    EXIT_UNUSABLE,
    ConfigOpt,
    JsonOpt,
    RunTagOpt,
    WorkspaceOpt,
    fail,
    leave,
    load,
    print_json,
    read_input,
)

ManifestArg = Annotated[str, typer.Argument(help="path or URL of a .parquet, .csv or .jsonl manifest")]
BatchArg = Annotated[str, typer.Argument(help="the batch id")]


def quote(ctx: typer.Context, manifest: ManifestArg, workspace: WorkspaceOpt, json: JsonOpt = False,
          config: ConfigOpt = None) -> None:  # fmt: skip
    """Validate and price a manifest without running it."""
    from batchrouter.batches.lifecycle import quarantine
    from batchrouter.cli.render import quote_view, show
    from batchrouter.core.errors import ManifestError
    from batchrouter.core.storage import Storage
    from batchrouter.intake.manifest import read_manifest
    from batchrouter.pricing.catalog import load_catalog
    from batchrouter.pricing.quote import build_quote

    settings = load(ctx, config)
    catalog = load_catalog(settings.models)
    data = read_input(manifest)
    try:
        parsed = read_manifest(manifest, data, catalog=catalog, limits=settings.limits)
    except ManifestError as exc:
        report = quarantine(Storage(settings.storage), workspace=workspace, source_name=manifest, data=data, error=exc)
        fail(f"{exc}\nA copy of the manifest and this report are kept at {report}", EXIT_UNUSABLE)
    policy = settings.workspace(workspace).policy
    summary = build_quote(parsed, workspace=workspace, catalog=catalog, policy=policy).summary()
    print_json(summary, indent=2) if json else show(quote_view(summary))
    leave(EXIT_OK if summary["accepted"] > 0 else EXIT_NOTHING_ACCEPTED)


def submit(ctx: typer.Context, manifest: ManifestArg, workspace: WorkspaceOpt, json: JsonOpt = False,
           run_tag: RunTagOpt = None, config: ConfigOpt = None) -> None:  # fmt: skip
    """Register a manifest as a batch under the storage root (Dagster runs it)."""
    from batchrouter.batches.lifecycle import submit as register
    from batchrouter.core.storage import Storage

    storage = Storage(load(ctx, config).storage)
    info = register(storage, workspace=workspace, source_name=manifest, data=read_input(manifest), run_tag=run_tag)
    print_json({"batch_id": info.batch_id, "workspace": info.workspace}) if json else print(info.batch_id)


@dataclass(frozen=True)
class _Counts:
    succeeded: int
    failed: int
    total: int
    cost_usd_micros: int
    elapsed_s: float


def run(ctx: typer.Context, manifest: ManifestArg, workspace: WorkspaceOpt, json: JsonOpt = False,
        run_tag: RunTagOpt = None, config: ConfigOpt = None,
        settings_stdin: Annotated[bool, typer.Option("--settings-stdin", hidden=True)] = False) -> None:  # fmt: skip
    """Quote, reserve, dispatch, write outputs and receipts and settle, in this process."""
    from batchrouter.batches.lifecycle import stage_dispatch, stage_manifest, stage_quote, stage_route
    from batchrouter.batches.lifecycle import submit as register
    from batchrouter.cli.progress import RunProgress
    from batchrouter.cli.render import run_view, show
    from batchrouter.core.config import Settings
    from batchrouter.core.errors import ManifestError
    from batchrouter.core.storage import Storage
    from batchrouter.money.ledger import InsufficientCredits
    from batchrouter.money.settlement import gate, stage_reserve, stage_settle
    from batchrouter.output.delivery import deliver_batch_completed
    from batchrouter.pricing.catalog import load_catalog

    settings = Settings.model_validate_json(sys.stdin.read()) if settings_stdin else load(ctx, config)
    storage = Storage(settings.storage)
    catalog = load_catalog(settings.models)
    info = register(storage, workspace=workspace, source_name=manifest, data=read_input(manifest), run_tag=run_tag)
    try:
        parsed = stage_manifest(storage, settings, catalog, info)
    except ManifestError as exc:
        where = storage.url("quarantine", info.workspace)
        fail(f"{exc}\nThe manifest and a report are kept under {where}", EXIT_UNUSABLE)
    stage_route(storage, info, parsed, stage_quote(storage, settings, catalog, info, parsed))
    if not gate(storage, settings, info):
        status = storage.read_json(*info.folder("status.json"))
        print_json(status) if json else print(f"batch {info.batch_id} is waiting: {status['message']}")
        leave(EXIT_NOTHING_ACCEPTED)
    try:
        stage_reserve(storage, settings, info)
    except InsufficientCredits as exc:
        if json:
            print_json({"batch_id": info.batch_id, "status": "insufficient_credits", "message": str(exc),
                        "missing_usd_micros": exc.missing})  # fmt: skip
            leave(EXIT_NOTHING_ACCEPTED)
        fail(f"batch {info.batch_id} not started: {exc}")
    started = time.monotonic()
    with RunProgress(enabled=not json and sys.stderr.isatty()) as progress:
        summary = stage_dispatch(storage, settings, catalog, info, on_progress=lambda ok, bad, total: progress(
            _Counts(ok, bad, total, 0, time.monotonic() - started)))  # fmt: skip
    if not summary["pending"]:
        summary["settlement"] = stage_settle(storage, settings, info)
        attempts = deliver_batch_completed(settings, storage, info)
        summary["webhooks"] = [{"endpoint_id": a.endpoint_id, "status_code": a.status_code} for a in attempts]
    print_json(summary, indent=2) if json else show(run_view(summary))
    nothing_to_do = summary["items"] == summary["rejected"] == 0
    leave(EXIT_OK if summary["succeeded"] > 0 or nothing_to_do else EXIT_NOTHING_ACCEPTED)


def approve(ctx: typer.Context, batch: BatchArg,
            by: Annotated[str, typer.Option("--by", help="who approves (recorded)")] = "cli",
            json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Approve a batch waiting at the approval gate."""
    from batchrouter.batches.lifecycle import load_batch
    from batchrouter.core.storage import Storage
    from batchrouter.money.settlement import approve as record_approval

    storage = Storage(load(ctx, config).storage)
    record = record_approval(storage, load_batch(storage, batch), by=by)
    if json:
        print_json(record)
    else:
        print(f"approved batch {batch}; the manifest sensor resumes it, or run it again with batchrouter run")


def status(ctx: typer.Context, batch: BatchArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Show a batch's state, quote, items by status and holds."""
    from batchrouter.batches.lifecycle import load_batch
    from batchrouter.batches.status import batch_status
    from batchrouter.cli.render import show, status_view
    from batchrouter.core.storage import Storage

    settings = load(ctx, config)
    storage = Storage(settings.storage)
    view = batch_status(storage, settings, load_batch(storage, batch))
    print_json(view) if json else show(status_view(view))
