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
    import uuid

    from batchrouter.access.accounts import Accounts
    from batchrouter.cli.render import usd as dollars
    from batchrouter.money import amounts
    from batchrouter.money.ledger import Ledger

    settings = load(ctx, config)
    micros = amounts.usd_to_micros(usd, field="--usd")
    entry = Ledger(settings.database).grant(workspace, micros, key=key or f"grant:{uuid.uuid4().hex}", memo=memo)
    if not entry.replayed:
        after = {"usd_micros": entry.amount_usd_micros, "memo": memo}
        Accounts(settings.database).record(workspace, "cli:operator", "credits.granted", entry.entry_id, after=after)
    if json:
        print_json({"entry_id": entry.entry_id, "amount_usd_micros": entry.amount_usd_micros,
                    "replayed": entry.replayed})  # fmt: skip
        return
    note = " (this key was used before: nothing new was credited)" if entry.replayed else ""
    print(f"granted {dollars(entry.amount_usd_micros)} to {workspace}, entry {entry.entry_id}{note}")


@credits.command()
def balance(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Available, held, spent and credited amounts of a workspace."""
    from batchrouter.cli.render import balance_view, show
    from batchrouter.money.ledger import Ledger

    shown = Ledger(load(ctx, config).database).balance(workspace).as_dict()
    print_json(shown) if json else show(balance_view(shown))


@credits.command()
def history(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """A workspace's ledger entries, oldest first."""
    from batchrouter.cli.render import history_view, show
    from batchrouter.money.ledger import Ledger

    rows = Ledger(load(ctx, config).database).history(workspace)
    print_json(rows) if json else show(history_view(rows))


@credits.command()
def buy(ctx: typer.Context, workspace: WorkspaceOpt, pack: Annotated[str, typer.Option("--pack")],
        json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Create a Stripe Checkout Session for a credit pack and print its URL."""
    from batchrouter.money.billing import create_checkout

    session_id, url = create_checkout(load(ctx, config), workspace=workspace, pack=pack)
    print_json({"session_id": session_id, "url": url}) if json else print(f"Pay here: {url}")


@credits.command()
def reconcile(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Credit paid Checkout Sessions the webhook missed."""
    from batchrouter.cli.render import usd
    from batchrouter.money.billing import reconcile as run_reconcile
    from batchrouter.money.ledger import Ledger

    settings = load(ctx, config)
    results = run_reconcile(settings, Ledger(settings.database))
    credited = [r for r in results if r.outcome == "credited"]
    total = sum(r.credited_usd_micros for r in credited)
    if json:
        print_json({"events": len(results), "credited": len(credited), "credited_usd_micros": total})
    else:
        print(f"reconciled {len(results)} checkout events: {len(credited)} newly credited, {usd(total)}")


@ledger.command()
def verify(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Replay the journal and prove balances, holds and conservation (exit 1 on a problem)."""
    from batchrouter.money.ledger import Ledger

    settings = load(ctx, config)
    report = Ledger(settings.database).verify()
    if json:
        print_json(report)
    else:
        verdict = "OK" if report["ok"] else "PROBLEMS FOUND"
        print(f"ledger {settings.database}: {report['entries']} entries, {report['workspaces']} workspaces: {verdict}")
        for problem in report["problems"]:
            print(f"  - {problem}")
    leave(EXIT_OK if report["ok"] else EXIT_NOTHING_ACCEPTED)


@ledger.command()
def serve(ctx: typer.Context,
          idle_s: Annotated[float, typer.Option("--idle-s", help="stop after this many idle seconds (0: never)")] = 0.0,
          config: ConfigOpt = None) -> None:  # fmt: skip
    """Own the database and serve it to other processes, in the foreground."""
    from batchrouter.money import control

    leave(control.serve(load(ctx, config).database, idle_s=idle_s or None, foreground=True))


@ledger.command()
def stop(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Stop the control service of the database (it restarts when next needed)."""
    from batchrouter.money import control

    database = load(ctx, config).database
    stopped = control.stop(database)
    if json:
        print_json({"database": str(database), "stopped": stopped})
    else:
        print(f"control service of {database}: {'stopped' if stopped else 'none was running'}")
