"""What an actor may do where: the one check every service method runs before acting.

An `Operator` (the CLI, Dagster) may do anything in any workspace. A `Principal` (an API key) acts
only in its own workspace, and only when its key holds the scope and its member's role allows the
action (the table in `batchrouter.access.accounts`).

Refusals are `AccessError`s: `forbidden` (403) for a key acting outside its powers or its workspace.
"""

from __future__ import annotations

from batchrouter.access.accounts import AccessError, Principal
from batchrouter.access.actors import Actor, Operator
from batchrouter.core.identity import canonical_workspace

# TODO(lead): raise core.errors.Forbidden here once the errors branch has it (code "forbidden", 403).


def forbidden(message: str) -> AccessError:
    return AccessError("forbidden", message, 403)


def require(actor: Actor, workspace: str, *, scope: str, action: str, doing: str) -> str:
    """The workspace's canonical name, once `actor` may do `doing` (e.g. "list members") in it.

    Raises:
        IdentityError: `workspace` cannot be a workspace name.
        AccessError: `forbidden`, a key of another workspace, or lacking the scope or the role action.
    """
    name = canonical_workspace(workspace)
    if isinstance(actor, Operator):
        return name
    if name != actor.workspace:
        raise forbidden(f"this key belongs to workspace {actor.workspace}; it may not {doing} in workspace {name}")
    if not actor.allows(scope, action):
        raise forbidden(
            f"this key (scopes {', '.join(actor.key.scopes)}; role {actor.role}) may not {doing}: "
            f"it needs scope {scope} and role action {action}"
        )
    return name


def require_operator(actor: Actor, *, doing: str) -> Operator:
    """The operator, when `actor` is one: some things only the installation's operator may do."""
    if isinstance(actor, Principal):
        raise forbidden(f"only the installation's operator may {doing}, not an API key")
    return actor
