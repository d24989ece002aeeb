"""Money commands: `credits` (grant, balance, history, buy, reconcile) and `ledger` (verify, serve, stop)."""

from __future__ import annotations

from typing import Annotated

import typer

from batchrouter.cli.common import (
    EXIT_NOTHING_ACCEPTED,
    EXIT_OK,
    ConfigOpt,
    JsonOpt,
    WorkspaceOpt,
    engine,
    jsonable,
    leave,
    load,
    print_json,
    remember_config,
)

credits = typer.Typer(help="Prepaid credits: grant, balance, history, buy, reconcile.", no_args_is_help=True)
ledger = typer.Typer(help="Ledger maintenance: verify, serve, stop.", no_args_is_help=True)


@credits.callback()
def _credits(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


@ledger.callback()
def _ledger(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


@credits.command()
def grant(ctx: typer.Context, workspace: WorkspaceOpt,
          usd: Annotated[str, typer.Option("--usd", help="amount in USD, e.g. 25 or 0.50")],
          key: Annotated[str | None, typer.Option("--key", help="idempotency key: the same key never credits twice")]
          = None, memo: Annotated[str | None, typer.Option("--memo")] = None,
          json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Grant promotional credit (idempotent by --key)."""
    from batchrouter.access.actors import CLI
    from batchrouter.cli.render import usd as dollars
    from batchrouter.core.amounts import usd_to_micros

    micros = usd_to_micros(usd, field="--usd")
    granted = engine(ctx, config).credits.grant(workspace, micros=micros, key=key, memo=memo, actor=CLI)
    if json:
        print_json(granted)
        return
    note = " (this key was used before: nothing new was credited)" if granted.replayed else ""
    print(f"granted {dollars(granted.amount_usd_micros)} to {workspace}, entry {granted.entry_id}{note}")


@credits.command()
def balance(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Available, held, spent and credited amounts of a workspace."""
    from batchrouter.cli.render import balance_view, show

    shown = engine(ctx, config).credits.balance(workspace).model_dump(mode="json")
    print_json(shown) if json else show(balance_view(shown))


@credits.command()
def history(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """A workspace's ledger entries, oldest first."""
    from batchrouter.cli.render import history_view, show

    rows = jsonable(engine(ctx, config).credits.history(workspace))
    print_json(rows) if json else show(history_view(rows))


@credits.command()
def buy(ctx: typer.Context, workspace: WorkspaceOpt, pack: Annotated[str, typer.Option("--pack")],
        json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Create a Stripe Checkout Session for a credit pack and print its URL."""
    from batchrouter.access.actors import CLI

    session = engine(ctx, config).credits.checkout(workspace, pack=pack, actor=CLI)
    print_json(session) if json else print(f"Pay here: {session.url}")


@credits.command()
def reconcile(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Credit paid Checkout Sessions the webhook missed."""
    from batchrouter.access.actors import CLI
    from batchrouter.cli.render import usd

    done = engine(ctx, config).credits.reconcile(actor=CLI)
    if json:
        print_json(done)
        return
    print(f"reconciled {done.events} checkout events: {done.credited} newly credited, {usd(done.credited_usd_micros)}")


@ledger.command()
def verify(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Replay the journal and prove balances, holds and conservation (exit 1 on a problem)."""
    router = engine(ctx, config)
    report = router.ledger.verify()
    if json:
        print_json(report)
    else:
        verdict = "OK" if report["ok"] else "PROBLEMS FOUND"
        counts = f"{report['entries']} entries, {report['workspaces']} workspaces"
        print(f"ledger {router.settings.database}: {counts}: {verdict}")
        for problem in report["problems"]:
            print(f"  - {problem}")
    leave(EXIT_OK if report["ok"] else EXIT_NOTHING_ACCEPTED)


@ledger.command()
def serve(ctx: typer.Context,
          idle_s: Annotated[float, typer.Option("--idle-s", help="stop after this many idle seconds (0: never)")] = 0.0,
          config: ConfigOpt = None) -> None:  # fmt: skip
    """Own the database and serve it to other processes, in the foreground."""
    from batchrouter.core import control

    leave(control.serve(load(ctx, config).database, idle_s=idle_s or None, foreground=True))


@ledger.command()
def stop(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Stop the control service of the database (it restarts when next needed)."""
    from batchrouter.core import control

    database = load(ctx, config).database
    stopped = control.stop(database)
    if json:
        print_json({"database": str(database), "stopped": stopped})
    else:
        print(f"control service of {database}: {'stopped' if stopped else 'none was running'}")
