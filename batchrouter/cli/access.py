"""Access commands: `keys`, `members`, `workspace` and `secrets`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import typer

from batchrouter.cli.common import (
    EXIT_NOTHING_ACCEPTED,
    ByEmailOpt,
    ConfigOpt,
    EmailOpt,
    JsonOpt,
    WorkspaceArg,
    WorkspaceOpt,
    engine,
    fail,
    jsonable,
    load,
    print_json,
    remember_config,
)

if TYPE_CHECKING:
    from batchrouter.access.keys import IssuedKey
    from batchrouter.access.members import Member

keys = typer.Typer(help="API keys: create, list, revoke, rotate.", no_args_is_help=True)
members = typer.Typer(help="Workspace members and roles: add, list, remove.", no_args_is_help=True)
workspace = typer.Typer(help="Suspend, resume, or delete a workspace's data.", no_args_is_help=True)
secrets = typer.Typer(help="Secrets at rest: rotate re-encrypts them with the first key.", no_args_is_help=True)

KeyIdArg = Annotated[str, typer.Argument(help="the key id")]
Role = Literal["owner", "admin", "member", "viewer"]


@keys.callback()
def _keys(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


@members.callback()
def _members(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


@workspace.callback()
def _workspace(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


@secrets.callback()
def _secrets(ctx: typer.Context, config: ConfigOpt = None) -> None:
    remember_config(ctx, config)


def _show_key(issued: IssuedKey, note: str, *, json: bool) -> None:
    print_json(issued) if json else print(f"{issued.key}\n({note})")


@keys.command("create")
def create_key(ctx: typer.Context, workspace: WorkspaceOpt, by: ByEmailOpt,
               name: Annotated[str, typer.Option("--name")],
               scopes: Annotated[str, typer.Option("--scopes", help="comma-separated: batches:read,batches:write,...")],
               expires_days: Annotated[int | None, typer.Option("--expires-days")] = None,
               json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """Create a key; it is printed once."""
    from datetime import timedelta

    from batchrouter.access.actors import CLI

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    expires = timedelta(days=expires_days) if expires_days else None
    issued = engine(ctx, config).keys.create(workspace, name=name, scopes=wanted, expires_in=expires, created_by=by,
                                             actor=CLI)  # fmt: skip
    _show_key(issued, f"key {issued.key_id}: store it now, it is never shown again", json=json)


@keys.command("list")
def list_keys(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """A workspace's keys (never their secrets)."""
    from batchrouter.access.actors import CLI
    from batchrouter.cli.render import show, table

    listed = jsonable(engine(ctx, config).keys.list(workspace, actor=CLI))
    print_json(listed) if json else show(table(
        ["KEY", "PREFIX", "NAME", "SCOPES", "CREATED BY", "EXPIRES", "REVOKED"],
        [[k["key_id"], k["prefix"], k["name"], ",".join(k["scopes"]), k["created_by"], k["expires_at"],
          k["revoked_at"]] for k in listed]))  # fmt: skip


@keys.command("revoke")
def revoke_key(ctx: typer.Context, key_id: KeyIdArg, workspace: WorkspaceOpt, json: JsonOpt = False,
               config: ConfigOpt = None) -> None:  # fmt: skip
    """Revoke a key at once."""
    from batchrouter.access.actors import CLI

    revoked = engine(ctx, config).keys.revoke(key_id, workspace=workspace, actor=CLI)
    print_json(revoked) if json else print(f"revoked {key_id}")


@keys.command("rotate")
def rotate_key(ctx: typer.Context, key_id: KeyIdArg, workspace: WorkspaceOpt,
               grace_hours: Annotated[float, typer.Option("--grace-hours")] = 24.0,
               json: JsonOpt = False, config: ConfigOpt = None) -> None:  # fmt: skip
    """A new key; the old one keeps working for the grace period."""
    from datetime import timedelta

    from batchrouter.access.actors import CLI

    grace = timedelta(hours=grace_hours)
    issued = engine(ctx, config).keys.rotate(key_id, workspace=workspace, grace=grace, actor=CLI)
    _show_key(issued, f"new key {issued.key_id}; {key_id} keeps working for {grace_hours:g} h", json=json)


def _show_members(listed: list[Member], *, json: bool) -> None:
    from batchrouter.cli.render import show, table

    rows = jsonable(listed)
    print_json(rows) if json else show(table(["EMAIL", "ROLE", "ADDED"],
                                             [[m["email"], m["role"], m["added_at"]] for m in rows]))  # fmt: skip


@members.command("add")
def add_member(ctx: typer.Context, workspace: WorkspaceOpt, email: EmailOpt,
               role: Annotated[Role, typer.Option("--role")], json: JsonOpt = False,
               config: ConfigOpt = None) -> None:  # fmt: skip
    """Add a member or change their role."""
    from batchrouter.access.actors import CLI

    _show_members(engine(ctx, config).members.set(email, workspace=workspace, role=role, actor=CLI), json=json)


@members.command("remove")
def remove_member(ctx: typer.Context, workspace: WorkspaceOpt, email: EmailOpt, json: JsonOpt = False,
                  config: ConfigOpt = None) -> None:  # fmt: skip
    """Remove a member (a workspace keeps at least one owner); exit 1 when they were not one."""
    from batchrouter.access.actors import CLI
    from batchrouter.core.errors import BatchRouterError

    try:
        left = engine(ctx, config).members.remove(email, workspace=workspace, actor=CLI)
    except BatchRouterError as exc:
        if exc.code != "not_found":
            raise
        fail(str(exc), EXIT_NOTHING_ACCEPTED)
    _show_members(left, json=json)


@members.command("list")
def list_members(ctx: typer.Context, workspace: WorkspaceOpt, json: JsonOpt = False,
                 config: ConfigOpt = None) -> None:  # fmt: skip
    """A workspace's members and their roles."""
    from batchrouter.access.actors import CLI

    _show_members(engine(ctx, config).members.list(workspace, actor=CLI), json=json)


ReasonOpt = Annotated[str | None, typer.Option("--reason", help="why (recorded in the audit trail)")]


def _suspend(ctx: typer.Context, name: str, suspended: bool, reason: str | None, config: str | None,
             *, json: bool) -> None:  # fmt: skip
    from batchrouter.access.actors import CLI

    engine(ctx, config).accounts.set_suspended(name, suspended, reason=reason, actor=CLI.actor)
    if json:
        print_json({"workspace": name, "suspended": suspended})
    else:
        print(f"workspace {name} {'suspended' if suspended else 'resumed'}")


@workspace.command()
def suspend(ctx: typer.Context, name: WorkspaceArg, reason: ReasonOpt = None, json: JsonOpt = False,
            config: ConfigOpt = None) -> None:  # fmt: skip
    """Suspend a workspace: its keys get 403 until it is resumed."""
    _suspend(ctx, name, True, reason, config, json=json)


@workspace.command()
def resume(ctx: typer.Context, name: WorkspaceArg, reason: ReasonOpt = None, json: JsonOpt = False,
           config: ConfigOpt = None) -> None:  # fmt: skip
    """Resume a suspended workspace."""
    _suspend(ctx, name, False, reason, config, json=json)


@workspace.command("delete-data")
def delete_data(ctx: typer.Context, name: WorkspaceArg, reason: ReasonOpt = None, json: JsonOpt = False,
                config: ConfigOpt = None) -> None:  # fmt: skip
    """Delete a workspace's manifests, outputs and usage; keep what the ledger and audit need."""
    from batchrouter.access.actors import CLI
    from batchrouter.batches.deletion import delete_workspace_data

    router = engine(ctx, config)
    report = delete_workspace_data(router.storage, router.settings, name, actor=CLI.actor)
    if json:
        print_json(report)
        return
    print(f"deleted {len(report['deleted'])} folders of {name}")
    print("\n".join([*(f"  - {item}" for item in report["deleted"]), "kept:",
                     *(f"  - {item['what']}: {item['why']}" for item in report["kept"])]))  # fmt: skip


@secrets.command()
def rotate(ctx: typer.Context, json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Re-encrypt webhook secrets and signing keys with the first key (see BATCHROUTER_SECRET_KEY)."""
    from batchrouter.access import vault

    counts = vault.rotate(load(ctx, config).database)
    print_json(counts) if json else print("re-encrypted " + ", ".join(f"{n} in {t}" for t, n in counts.items()))
