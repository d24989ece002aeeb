"""Workspaces, members and roles, scoped API keys, and the audit trail.

Roles and what each may do (the README shows the same table):

    action           owner  admin  member  viewer
    batches:read       x      x      x       x
    batches:write      x      x      x
    credits:read       x      x      x       x
    credits:write      x      x
    members:read       x      x      x       x
    members:write      x      x
    keys:read          x      x      x
    keys:write         x      x      x
    webhooks:read      x      x      x
    webhooks:write     x      x
    workspace:admin    x

API keys are `br_<prefix>_<secret>`: shown once at creation, stored as the prefix (to find the key)
and the SHA-256 of the secret (a 192-bit random value, so a fast hash suffices), compared in
constant time. A key has scopes (`batches:read`, `batches:write`, `credits:read`, `credits:write`,
`admin`) and acts for the member who created it: a request is allowed when the key holds the
endpoint's scope and the creator's current role allows the endpoint's action. Keys expire,
can be revoked, and rotate with a grace period during which the old key still works.
Every state change writes one append-only audit event: actor, workspace, action, time, before/after.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from batchrouter.core.control import served
from batchrouter.core.db import Database
from batchrouter.core.errors import AccessError as AccessError
from batchrouter.core.errors import (
    Forbidden,
    IdentityError,
    InvalidApiKey,
    InvalidEmail,
    InvalidMemberEmail,
    InvalidMemberWorkspace,
    InvalidRole,
    InvalidScope,
    KeyAlreadyRevoked,
    KeyExpired,
    KeyNotFound,
    KeyOwnerRemoved,
    KeyRevoked,
    LastOwner,
    MissingApiKey,
    NotAMember,
)
from batchrouter.core.identity import canonical_email, canonical_workspace

ROLES = ("owner", "admin", "member", "viewer")
SCOPES = ("batches:read", "batches:write", "credits:read", "credits:write", "admin")
ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "owner": frozenset({"batches:read", "batches:write", "credits:read", "credits:write", "members:read",
                        "members:write", "keys:read", "keys:write", "webhooks:read", "webhooks:write",
                        "workspace:admin"}),
    "admin": frozenset({"batches:read", "batches:write", "credits:read", "credits:write", "members:read",
                        "members:write", "keys:read", "keys:write", "webhooks:read", "webhooks:write"}),
    "member": frozenset({"batches:read", "batches:write", "credits:read", "members:read", "keys:read", "keys:write",
                         "webhooks:read"}),
    "viewer": frozenset({"batches:read", "credits:read", "members:read"}),
}  # fmt: skip

SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    workspace VARCHAR PRIMARY KEY, suspended BOOLEAN NOT NULL, suspended_reason VARCHAR, created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    workspace VARCHAR NOT NULL, email VARCHAR NOT NULL, role VARCHAR NOT NULL, added_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace, email)
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id VARCHAR PRIMARY KEY, prefix VARCHAR NOT NULL UNIQUE, secret_sha256 VARCHAR NOT NULL,
    workspace VARCHAR NOT NULL, name VARCHAR NOT NULL, scopes VARCHAR[] NOT NULL, created_by VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ, replaced_by VARCHAR
);
CREATE TABLE IF NOT EXISTS audit_events (
    event_id VARCHAR PRIMARY KEY, occurred_at TIMESTAMPTZ NOT NULL, workspace VARCHAR NOT NULL, actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL, target VARCHAR, before_json VARCHAR, after_json VARCHAR
);
"""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    prefix: str
    workspace: str
    name: str
    scopes: tuple[str, ...]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id, "prefix": self.prefix, "workspace": self.workspace, "name": self.name,
            "scopes": list(self.scopes), "created_by": self.created_by, "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }  # fmt: skip


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key, for a workspace, acting for a member with a role."""

    key: ApiKey
    role: str

    @property
    def workspace(self) -> str:
        return self.key.workspace

    @property
    def actor(self) -> str:
        return f"key:{self.key.prefix} ({self.key.created_by})"

    def allows(self, scope: str, action: str) -> bool:
        return scope in self.key.scopes and action in ROLE_ACTIONS.get(self.role, frozenset())

    def require(self, workspace: str, *, scope: str, action: str, doing: str) -> str:
        """The workspace's canonical name, once this key may do `doing` (e.g. "list members") in it.

        Raises:
            IdentityError: `workspace` cannot be a workspace name.
            Forbidden: another workspace, or the key lacks the scope or its role the action.
        """
        name = canonical_workspace(workspace)
        if name != self.workspace:
            raise Forbidden(f"this key belongs to workspace {self.workspace}; it may not {doing} in workspace {name}")
        if not self.allows(scope, action):
            raise Forbidden(f"this key (scopes {', '.join(self.key.scopes)}; role {self.role}) may not {doing}: "
                            f"it needs scope {scope} and role action {action}")  # fmt: skip
        return name

    def require_operator(self, *, doing: str) -> None:
        """Some things only the installation's operator may do: never a key."""
        raise Forbidden(f"only the installation's operator may {doing}, not an API key")


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _name(canonical: Callable[[object], str], value: str) -> str:
    """The canonical spelling (batchrouter.core.identity); a name that cannot be one is refused with 422."""
    try:
        return canonical(value)
    except InvalidEmail as exc:
        raise InvalidMemberEmail(exc.message) from exc
    except IdentityError as exc:
        raise InvalidMemberWorkspace(exc.message) from exc


def _lookup(canonical: Callable[[object], str], value: str) -> str:
    """For look-ups: the canonical spelling, or the value itself when it has none (it then matches nothing)."""
    try:
        return canonical(value)
    except IdentityError:
        return value


class Accounts:
    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.db = Database(path, schema=SCHEMA)

    # -- audit -------------------------------------------------------------------------------
    @staticmethod
    def _audit(
        con: duckdb.DuckDBPyConnection, workspace: str, actor: str, action: str, target: str | None,
        before: Any = None, after: Any = None,
    ) -> None:  # fmt: skip
        con.execute(
            "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [uuid.uuid4().hex, _now(), workspace, actor, action, target,
             json.dumps(before, default=str) if before is not None else None,
             json.dumps(after, default=str) if after is not None else None],
        )  # fmt: skip

    @served()
    def record(self, workspace: str, actor: str, action: str, target: str | None, *, before: Any = None,
               after: Any = None) -> None:  # fmt: skip
        """Append an audit event for a state change made elsewhere (batches, credits)."""
        workspace = _lookup(canonical_workspace, workspace)
        self.db.transaction(lambda con: self._audit(con, workspace, actor, action, target, before, after))

    @served(read_only=True)
    def audit_events(self, workspace: str) -> list[dict[str, Any]]:
        workspace = _lookup(canonical_workspace, workspace)
        with self.db.connect() as con:
            cur = con.execute(
                "SELECT * FROM audit_events WHERE workspace = ? ORDER BY occurred_at, event_id", [workspace]
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # -- workspaces ----------------------------------------------------------------------------
    @staticmethod
    def _ensure_workspace(con: duckdb.DuckDBPyConnection, workspace: str) -> None:
        con.execute("INSERT INTO workspaces VALUES (?, false, NULL, ?) ON CONFLICT DO NOTHING", [workspace, _now()])

    @served()
    def set_suspended(self, workspace: str, suspended: bool, *, reason: str | None, actor: str) -> None:
        workspace = _name(canonical_workspace, workspace)

        def work(con: duckdb.DuckDBPyConnection) -> None:
            self._ensure_workspace(con, workspace)
            before = con.execute("SELECT suspended FROM workspaces WHERE workspace = ?", [workspace]).fetchone()
            con.execute(
                "UPDATE workspaces SET suspended = ?, suspended_reason = ? WHERE workspace = ?",
                [suspended, reason if suspended else None, workspace],
            )
            action = "workspace.suspended" if suspended else "workspace.resumed"
            self._audit(con, workspace, actor, action, workspace, {"suspended": bool(before and before[0])},
                        {"suspended": suspended, "reason": reason})  # fmt: skip

        self.db.transaction(work)

    @served(read_only=True)
    def suspension(self, workspace: str) -> str | None:
        """The reason the workspace is suspended, or None when it is not."""
        workspace = _lookup(canonical_workspace, workspace)
        with self.db.connect() as con:
            row = con.execute(
                "SELECT suspended, suspended_reason FROM workspaces WHERE workspace = ?", [workspace]
            ).fetchone()
        if row and row[0]:
            return str(row[1] or "suspended")
        return None

    # -- members -------------------------------------------------------------------------------
    @served()
    def set_member(self, workspace: str, email: str, role: str, *, actor: str) -> None:
        if role not in ROLES:
            raise InvalidRole(f"role {role!r} is not one of {', '.join(ROLES)}")
        workspace, email = _name(canonical_workspace, workspace), _name(canonical_email, email)

        def work(con: duckdb.DuckDBPyConnection) -> None:
            self._ensure_workspace(con, workspace)
            row = con.execute(
                "SELECT role FROM members WHERE workspace = ? AND email = ?", [workspace, email]
            ).fetchone()
            if row is not None and row[0] == "owner" and role != "owner":
                owners = con.execute(
                    "SELECT count(*) FROM members WHERE workspace = ? AND role = 'owner'", [workspace]
                ).fetchone()
                if owners and owners[0] <= 1:
                    raise LastOwner("a workspace keeps at least one owner; make another owner first")
            con.execute(
                "INSERT INTO members VALUES (?, ?, ?, ?) "
                "ON CONFLICT (workspace, email) DO UPDATE SET role = excluded.role",
                [workspace, email, role, _now()],
            )
            self._audit(con, workspace, actor, "member.set", email, {"role": row[0]} if row else None, {"role": role})

        self.db.transaction(work)

    @served()
    def remove_member(self, workspace: str, email: str, *, actor: str) -> bool:
        workspace, email = _lookup(canonical_workspace, workspace), _lookup(canonical_email, email)

        def work(con: duckdb.DuckDBPyConnection) -> bool:
            row = con.execute(
                "SELECT role FROM members WHERE workspace = ? AND email = ?", [workspace, email]
            ).fetchone()
            if row is None:
                return False
            if row[0] == "owner":
                owners = con.execute(
                    "SELECT count(*) FROM members WHERE workspace = ? AND role = 'owner'", [workspace]
                ).fetchone()
                if owners and owners[0] <= 1:
                    raise LastOwner("a workspace keeps at least one owner")
            con.execute("DELETE FROM members WHERE workspace = ? AND email = ?", [workspace, email])
            self._audit(con, workspace, actor, "member.removed", email, {"role": row[0]}, None)
            return True

        return self.db.transaction(work)

    @served(read_only=True)
    def members(self, workspace: str) -> list[dict[str, Any]]:
        workspace = _lookup(canonical_workspace, workspace)
        with self.db.connect() as con:
            rows = con.execute(
                "SELECT email, role, added_at FROM members WHERE workspace = ? ORDER BY email", [workspace]
            ).fetchall()
        return [{"email": e, "role": r, "added_at": a.isoformat()} for e, r, a in rows]

    @served(read_only=True)
    def role(self, workspace: str, email: str) -> str | None:
        workspace, email = _lookup(canonical_workspace, workspace), _lookup(canonical_email, email)
        with self.db.connect() as con:
            row = con.execute(
                "SELECT role FROM members WHERE workspace = ? AND email = ?", [workspace, email]
            ).fetchone()
        return str(row[0]) if row else None

    # -- keys ----------------------------------------------------------------------------------
    @served()
    def create_key(
        self, workspace: str, *, name: str, scopes: list[str], created_by: str, actor: str,
        expires_in: timedelta | None = None,
    ) -> tuple[str, ApiKey]:  # fmt: skip
        """A new key; returns (the full key, shown only now; its record)."""
        workspace, created_by = _name(canonical_workspace, workspace), _name(canonical_email, created_by)
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise InvalidScope(f"scopes must be a non-empty subset of {', '.join(SCOPES)}")
        role = self.role(workspace, created_by)
        if role is None:
            raise NotAMember(f"{created_by} is not a member of workspace {workspace}")
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        now = _now()
        key = ApiKey(uuid.uuid4().hex[:16], prefix, workspace, name[:100], tuple(scopes), created_by, now,
                     now + expires_in if expires_in else None, None)  # fmt: skip

        def work(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                [key.key_id, prefix, _digest(secret), workspace, key.name, list(scopes), key.created_by, now,
                 key.expires_at],
            )  # fmt: skip
            self._audit(con, workspace, actor, "key.created", key.key_id, None, key.public())

        self.db.transaction(work)
        return f"br_{prefix}_{secret}", key

    @served(read_only=True)
    def keys(self, workspace: str) -> list[ApiKey]:
        workspace = _lookup(canonical_workspace, workspace)
        with self.db.connect() as con:
            rows = con.execute(
                "SELECT key_id, prefix, workspace, name, scopes, created_by, created_at, expires_at, revoked_at "
                "FROM api_keys WHERE workspace = ? ORDER BY created_at",
                [workspace],
            ).fetchall()
        return [ApiKey(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6], r[7], r[8]) for r in rows]

    @served()
    def revoke_key(self, workspace: str, key_id: str, *, actor: str) -> ApiKey:
        workspace = _lookup(canonical_workspace, workspace)

        def work(con: duckdb.DuckDBPyConnection) -> ApiKey:
            key = self._key_in(con, workspace, key_id)
            if key.revoked_at is None:
                con.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", [_now(), key_id])
                self._audit(con, workspace, actor, "key.revoked", key_id, key.public(), {"revoked": True})
            return key

        return self.db.transaction(work)

    @served()
    def rotate_key(self, workspace: str, key_id: str, *, actor: str, grace: timedelta) -> tuple[str, ApiKey]:
        """A new key with the same name and scopes; the old one keeps working for `grace`, then expires."""
        workspace = _lookup(canonical_workspace, workspace)
        with self.db.connect() as con:
            old = self._key_in(con, workspace, key_id)
        if old.revoked_at is not None:
            raise KeyAlreadyRevoked(f"key {key_id} is revoked; create a new one")
        remaining = old.expires_at - _now() if old.expires_at else None
        full, new = self.create_key(workspace, name=old.name, scopes=list(old.scopes), created_by=old.created_by,
                                    actor=actor, expires_in=remaining)  # fmt: skip
        until = _now() + grace
        if old.expires_at is not None and old.expires_at < until:
            until = old.expires_at

        def work(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(
                "UPDATE api_keys SET expires_at = ?, replaced_by = ? WHERE key_id = ?", [until, new.key_id, key_id]
            )
            self._audit(con, workspace, actor, "key.rotated", key_id, old.public(),
                        {"expires_at": until.isoformat(), "replaced_by": new.key_id})  # fmt: skip

        self.db.transaction(work)
        return full, new

    @staticmethod
    def _key_in(con: duckdb.DuckDBPyConnection, workspace: str, key_id: str) -> ApiKey:
        r = con.execute(
            "SELECT key_id, prefix, workspace, name, scopes, created_by, created_at, expires_at, revoked_at "
            "FROM api_keys WHERE key_id = ? AND workspace = ?",
            [key_id, workspace],
        ).fetchone()
        if r is None:
            raise KeyNotFound(f"no key {key_id} in workspace {workspace}")
        return ApiKey(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6], r[7], r[8])

    @served(read_only=True)
    def authenticate(self, token: str | None) -> Principal:
        """The principal of a presented key; AccessError 401 for a missing, unknown, revoked or expired one."""
        if not token or not token.startswith("br_") or token.count("_") < 2:
            raise MissingApiKey("send an API key as 'Authorization: Bearer br_...'")
        _, prefix, secret = token.split("_", 2)
        with self.db.connect() as con:
            r = con.execute(
                "SELECT key_id, prefix, workspace, name, scopes, created_by, created_at, expires_at, revoked_at, "
                "secret_sha256 FROM api_keys WHERE prefix = ?",
                [prefix],
            ).fetchone()
        # Compare even when the prefix is unknown, so timing does not reveal which prefixes exist.
        expected = r[9] if r else _digest("no such key")
        if not hmac.compare_digest(expected, _digest(secret)) or r is None:
            raise InvalidApiKey("the API key is not valid")
        key = ApiKey(r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6], r[7], r[8])
        if key.revoked_at is not None:
            raise KeyRevoked("the API key was revoked")
        if key.expires_at is not None and key.expires_at <= _now():
            raise KeyExpired("the API key has expired")
        role = self.role(key.workspace, key.created_by)
        if role is None:
            raise KeyOwnerRemoved("the member who created this key left the workspace")
        return Principal(key, role)
