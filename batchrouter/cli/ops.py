"""Operator commands: sql, serve, simulate, sample, verify and `webhooks`."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

import typer

from batchrouter.cli.common import (
    EXIT_UNUSABLE,
    ConfigOpt,
    JsonOpt,
    OptionalWorkspaceOpt,
    WorkspaceOpt,
    engine,
    fail,
    leave,
    load,
    print_json,
    remember_config,
)

webhooks = typer.Typer(help="Webhook endpoints (add, list, remove) and the outbox (drain).", no_args_is_help=True)


@webhooks.callback()
def _webhooks(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


def sql(ctx: typer.Context, query: Annotated[str, typer.Argument(help="one read-only SELECT")],
        workspace: OptionalWorkspaceOpt = None, json: JsonOpt = False,
        csv: Annotated[bool, typer.Option("--csv", help="print CSV")] = False,
        config: ConfigOpt = None) -> None:  # fmt: skip
    """Run a read-only SQL query over usage and ledger views."""
    if json and csv:
        fail("--json and --csv are exclusive; pass one", EXIT_UNUSABLE)
    from batchrouter.cli.render import show, table

    result = engine(ctx, config).reports.sql(query, workspace=workspace)
    if json:
        print_json(result.records())
    elif csv:
        import csv as csv_module

        csv_module.writer(sys.stdout).writerows([result.columns, *result.rows])
    else:
        show(table(result.columns, result.rows))


def serve(ctx: typer.Context, host: Annotated[str | None, typer.Option("--host")] = None,
          port: Annotated[int | None, typer.Option("--port")] = None, config: ConfigOpt = None) -> None:  # fmt: skip
    """Serve the HTTP API (batches, keys, members, the Stripe webhook, ...)."""
    from batchrouter.api import serve as serve_api

    settings = load(ctx, config)
    serve_api(settings, host=host or settings.api.host, port=port or settings.api.port)


Shape = Literal["fixed", "uniform", "lognormal"]


def simulate(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port")] = 8900,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    config_json: Annotated[str | None, typer.Option("--config-json", hidden=True)] = None,
    # One option per field of SimulatorConfig (tests/unit/test_cli.py keeps the two lists equal): the
    # fields are spelled out so that `--help` need not import the config's pydantic models.
    latency_ms: Annotated[float | None, typer.Option(help="mean latency of an answer")] = None,
    latency_shape: Annotated[Shape | None, typer.Option()] = None,
    rpm: Annotated[int | None, typer.Option(help="requests per minute before 429s")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute before 429s")] = None,
    error_rate: Annotated[float | None, typer.Option(help="share of 5xx answers")] = None,
    stall_rate: Annotated[float | None, typer.Option()] = None,
    truncate_rate: Annotated[float | None, typer.Option()] = None,
    malformed_rate: Annotated[float | None, typer.Option()] = None,
    trickle_rate: Annotated[float | None, typer.Option()] = None,
    trickle_seconds: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    max_output_words: Annotated[int | None, typer.Option()] = None,
    anthropic_token_ratio: Annotated[float | None, typer.Option()] = None,
    prompt_cache_ttl_s: Annotated[float | None, typer.Option()] = None,
    flex_latency_factor: Annotated[float | None, typer.Option(help="flex requests: N times slower")] = None,
    flex_unavailable_rate: Annotated[float | None, typer.Option(help="share of flex requests refused (429)")] = None,
    batch_time_scale: Annotated[float | None, typer.Option(help="provider batches' clock: N times faster")] = None,
    batch_validating_s: Annotated[float | None, typer.Option()] = None,
    batch_median_s: Annotated[float | None, typer.Option(help="median provider-batch time (provider s)")] = None,
    batch_sigma: Annotated[float | None, typer.Option(help="spread of provider-batch times (lognormal)")] = None,
    batch_finalizing_s: Annotated[float | None, typer.Option()] = None,
    batch_cancel_s: Annotated[float | None, typer.Option()] = None,
    batch_window_s: Annotated[float | None, typer.Option(help="completion window before expiry")] = None,
    batch_stuck_rate: Annotated[float | None, typer.Option(help="share of provider batches that get stuck")] = None,
    batch_stuck_states: Annotated[list[str] | None, typer.Option(help="where stuck batches stop (repeat)")] = None,
    batch_max_requests: Annotated[int | None, typer.Option()] = None,
    batch_max_bytes: Annotated[int | None, typer.Option()] = None,
    batch_enqueued_tokens: Annotated[int | None, typer.Option()] = None,
    batch_enqueued_tokens_per_model: Annotated[
        list[str] | None, typer.Option(help="MODEL=TOKENS enqueued-token limit of one model (repeat)")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the provider simulator (OpenAI and Anthropic wire formats) on loopback."""
    from batchrouter.core.config import SimulatorConfig
    from batchrouter.simulator import serve as serve_simulator

    base = SimulatorConfig.model_validate_json(config_json) if config_json else load(ctx, config).simulator
    overrides: dict[str, Any] = {k: v for k, v in ctx.params.items() if k in SimulatorConfig.model_fields}
    if batch_enqueued_tokens_per_model:
        pairs = [p.partition("=") for p in batch_enqueued_tokens_per_model]
        if any(not (m and n.isdigit()) for m, _, n in pairs):
            fail("--batch-enqueued-tokens-per-model takes MODEL=TOKENS, e.g. gpt-4o-mini=2000000", EXIT_UNUSABLE)
        overrides["batch_enqueued_tokens_per_model"] = {m: int(n) for m, _, n in pairs}
    from pydantic import ValidationError

    try:
        chosen = SimulatorConfig.model_validate(
            base.model_dump() | {k: v for k, v in overrides.items() if v not in (None, [])}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", EXIT_UNUSABLE)
    print(f"provider simulator on http://{host}:{port}/v1 ({chosen.model_dump_json()})", flush=True)
    serve_simulator(chosen, host=host, port=port)


def sample(out: Annotated[str, typer.Argument(help="OUT.parquet or OUT.csv")],
           items: Annotated[int, typer.Option("--items")] = 100, seed: Annotated[int, typer.Option("--seed")] = 7,
           json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Write a sample manifest (.parquet or .csv)."""
    from pathlib import Path

    from batchrouter.intake.sample import sample_manifest

    path = Path(out)
    frame = sample_manifest(items, seed=seed)
    frame.write_csv(path) if path.suffix == ".csv" else frame.write_parquet(path)
    print_json({"path": str(path), "items": items}) if json else print(path)


VERIFY_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def verify(ctx: typer.Context) -> None:
    """Check a downloaded batch folder against its signed summary.json: BATCH_DIR [--public-key PEM] [--json]."""
    from batchrouter.output.summary import main_verify

    leave(main_verify(ctx.args))


@webhooks.command("add")
def add_webhook(ctx: typer.Context, url: Annotated[str, typer.Argument(help="where to POST batch.completed")],
                workspace: WorkspaceOpt, json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Add an endpoint; its signing secret is printed once."""
    from batchrouter.access.actors import CLI

    added = engine(ctx, config).webhooks.add(url, workspace=workspace, actor=CLI)
    print_json(added) if json else print(f"endpoint {added.endpoint_id}; signing secret (shown once): {added.secret}")


@webhooks.command("remove")
def remove_webhook(ctx: typer.Context, endpoint_id: Annotated[str, typer.Argument()], workspace: WorkspaceOpt,
                   json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Remove an endpoint."""
    from batchrouter.access.actors import CLI

    removed = engine(ctx, config).webhooks.remove(endpoint_id, workspace=workspace, actor=CLI)
    print_json(removed) if json else print(f"removed {removed.removed}")


@webhooks.command("list")
def list_webhooks(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False,
                  config: ConfigOpt = None) -> None:  # fmt: skip
    """A workspace's endpoints and whether they are enabled."""
    from batchrouter.access.actors import CLI
    from batchrouter.cli.render import show, table

    rows = engine(ctx, config).webhooks.list(workspace, actor=CLI)
    print_json(rows) if json else show(table(
        ["ENDPOINT", "URL", "ENABLED", "DISABLED BECAUSE", "FAILURES"],
        [[e.endpoint_id, e.url, e.enabled, e.disabled_reason, e.failures] for e in rows]))  # fmt: skip


@webhooks.command("drain")
def drain_webhooks(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Send every webhook delivery that is due, once each (what the outbox sensor does); never waits."""
    from dataclasses import asdict

    from batchrouter.cli.render import show, table

    attempts = engine(ctx, config).webhooks.drain()
    print_json([asdict(a) | {"ok": a.ok} for a in attempts]) if json else show(table(
        ["EVENT", "ENDPOINT", "ATTEMPT", "STATUS", "ERROR"],
        [[a.event_id, a.endpoint_id, a.attempt, a.status_code or "", a.error or ""] for a in attempts]))  # fmt: skip
