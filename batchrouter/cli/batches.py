"""Batch commands: quote, submit, run, approve, status (the engine's `batches` service)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from batchrouter.cli.common import (
    EXIT_NOTHING_ACCEPTED,
    EXIT_OK,
    EXIT_UNUSABLE,
    ConfigOpt,
    DeadlineOpt,
    JsonOpt,
    RunTagOpt,
    WorkspaceOpt,
    engine,
    fail,
    leave,
    print_json,
    read_input,
)

ManifestArg = Annotated[str, typer.Argument(help="path or URL of a .parquet, .csv or .jsonl manifest")]
BatchArg = Annotated[str, typer.Argument(help="the batch id")]


def quote(ctx: typer.Context, manifest: ManifestArg, workspace: WorkspaceOpt, json: JsonOpt = False,
          deadline: DeadlineOpt = None, config: ConfigOpt = None) -> None:  # fmt: skip
    """Validate and price a manifest without running it."""
    from batchrouter.cli.render import quote_view, show
    from batchrouter.core.errors import ManifestError

    data = read_input(manifest)
    try:
        summary = engine(ctx, config).batches.preview(data, filename=manifest, workspace=workspace,
                                                      deadline=deadline).to_json()  # fmt: skip
    except ManifestError as exc:
        fail(f"{exc}\nA copy of the manifest and this report are kept at {exc.report}", EXIT_UNUSABLE)
    print_json(summary, indent=2) if json else show(quote_view(summary))
    leave(EXIT_OK if summary["accepted"] > 0 else EXIT_NOTHING_ACCEPTED)


def submit(ctx: typer.Context, manifest: ManifestArg, workspace: WorkspaceOpt, json: JsonOpt = False,
           run_tag: RunTagOpt = None, deadline: DeadlineOpt = None, config: ConfigOpt = None) -> None:  # fmt: skip
    """Register a manifest as a batch under the storage root (Dagster runs it)."""
    batches = engine(ctx, config).batches
    view = batches.submit(read_input(manifest), filename=manifest, workspace=workspace, run_tag=run_tag,
                          deadline=deadline)  # fmt: skip
    print_json({"batch_id": view.batch_id, "workspace": view.workspace}) if json else print(view.batch_id)


WaitOpt = Annotated[bool, typer.Option("--wait", help="keep a batch waiting on provider batches going until it ends")]


def run(ctx: typer.Context, manifest: ManifestArg, workspace: WorkspaceOpt, json: JsonOpt = False,
        run_tag: RunTagOpt = None, deadline: DeadlineOpt = None, wait: WaitOpt = False,
        config: ConfigOpt = None) -> None:  # fmt: skip
    """Quote, reserve, send every item on its lane, write outputs and receipts and settle, in this process.

    Items in provider batches are collected by running the same command again (or `--wait`, or the
    Dagster sensor); until then the batch waits on its providers and nothing runs."""
    from batchrouter.access.actors import CLI
    from batchrouter.batches.states import BatchState
    from batchrouter.cli.progress import RunProgress
    from batchrouter.cli.render import run_view, show
    from batchrouter.core.errors import InsufficientCredits, ManifestError

    router = engine(ctx, config)
    batches, data = router.batches, read_input(manifest)
    batch_id = batches.submit(data, filename=manifest, workspace=workspace, run_tag=run_tag,
                              deadline=deadline).batch_id  # fmt: skip
    try:
        view = batches.create(data, filename=manifest, workspace=workspace, run_tag=run_tag, actor=CLI,
                              deadline=deadline)  # fmt: skip
    except ManifestError as exc:
        where = router.storage.url("quarantine", workspace)
        fail(f"{exc}\nThe manifest and a report are kept under {where}", EXIT_UNUSABLE)
    except InsufficientCredits as exc:
        if not json:
            fail(f"batch {batch_id} not started: {exc}")
        print_json({"batch_id": batch_id, "status": "insufficient_credits", "message": str(exc),
                    "missing_usd_micros": exc.missing})  # fmt: skip
        leave(EXIT_NOTHING_ACCEPTED)
    if view.state == BatchState.AWAITING_APPROVAL:
        print_json(view.to_json()) if json else print(f"batch {batch_id} is waiting: {view.message}")
        leave(EXIT_NOTHING_ACCEPTED)
    with RunProgress(enabled=not json and sys.stderr.isatty()) as progress:
        summary = batches.advance(batch_id, actor=CLI, on_progress=progress).to_json()
        while wait and summary["state"] == BatchState.WAITING_ON_PROVIDER:
            time.sleep(min(60.0, batches.next_look_s(batch_id) or 1.0))  # the user asked to wait for the providers
            summary = batches.advance(batch_id, actor=CLI, on_progress=progress).to_json()
    print_json(summary, indent=2) if json else show(run_view(summary))
    if summary["state"] == BatchState.WAITING_ON_PROVIDER:
        return  # exit 0, on its way: running the command again collects what the providers answered
    nothing_to_do = summary["items"] == summary["rejected"] == 0
    leave(EXIT_OK if summary["succeeded"] > 0 or nothing_to_do else EXIT_NOTHING_ACCEPTED)


def approve(ctx: typer.Context, batch: BatchArg,
            by: Annotated[str | None, typer.Option("--by", help="who approves (recorded)")] = None,
            json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Approve a batch waiting at the approval gate."""
    from batchrouter.access.actors import CLI, Operator

    view = engine(ctx, config).batches.approve(batch, actor=CLI if by is None else Operator(by))
    if json:
        print_json(view.to_json())
    else:
        print(f"approved batch {batch}; the manifest sensor resumes it, or run it again with batchrouter run")


def status(ctx: typer.Context, batch: BatchArg, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Show a batch's state, quote, items by status and holds."""
    from batchrouter.cli.render import show, status_view

    view = engine(ctx, config).batches.status(batch).to_json()
    print_json(view) if json else show(status_view(view))
