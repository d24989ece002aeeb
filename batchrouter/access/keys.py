"""The keys service: API keys of a workspace, who may manage whose, and who a presented key is.

Rules:
- a key never grants what it does not hold: it creates only keys with a subset of its scopes, and
  rotates only keys whose scopes it holds (the rotated key is handed to the caller);
- a key manages (revokes, rotates) its own member's keys; a key of an owner or admin also the keys of
  members of no higher role;
- a key of a suspended workspace is refused, and each key is rate limited (a token bucket of
  `api.rate_limit_burst` requests refilled at `api.rate_limit_per_minute`).
An operator (the CLI) may do anything, but names the member a new key acts for.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel

from batchrouter.access.accounts import ROLES, SCOPES, ApiKey, Principal
from batchrouter.access.actors import Actor
from batchrouter.core.errors import Forbidden, InvalidRequest, InvalidScope, NotFound, RateLimited, WorkspaceSuspended
from batchrouter.core.results import Timestamp

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

KEY_NOTE = "store the key now: it is never shown again"


class KeyInfo(BaseModel):
    """A key as listed (`ApiKey.public()`): never its secret."""

    key_id: str
    prefix: str
    workspace: str
    name: str
    scopes: list[str]
    created_by: str
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        return cls(key_id=key.key_id, prefix=key.prefix, workspace=key.workspace, name=key.name,
                   scopes=list(key.scopes), created_by=key.created_by, created_at=key.created_at,
                   expires_at=key.expires_at, revoked_at=key.revoked_at)  # fmt: skip


class IssuedKey(KeyInfo):
    """A new key (created or rotated), with the full key, shown only this once."""

    key: str
    note: str = KEY_NOTE


class RevokedKey(KeyInfo):
    revoked: bool = True


class KeyRateLimit:
    """A token bucket per key: `burst` requests at once, refilled at `per_minute`; one per process."""

    def __init__(self, per_minute: int, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.clock = per_minute / 60.0, float(burst), clock
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Spend one request of the key's bucket; raises RateLimited when it is empty."""
        with self.lock:
            now = self.clock()
            level, stamp = self.buckets.get(key_id, (self.capacity, now))
            level = min(self.capacity, level + (now - stamp) * self.rate)
            if level < 1:
                self.buckets[key_id] = (level, now)
                wait = (1 - level) / self.rate
                raise RateLimited(f"too many requests for this key; retry in {wait:.1f} s", retry_after_s=wait)
            self.buckets[key_id] = (level - 1, now)


class Keys:
    def __init__(self, engine: BatchRouter) -> None:
        self.engine = engine
        api = engine.settings.api
        self.rate_limit = KeyRateLimit(api.rate_limit_per_minute, api.rate_limit_burst)

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a presented key (`br_<prefix>_<secret>`), counted against its rate limit.

        Raises:
            AccessError: 401 `unauthenticated`, `invalid_key`, `key_revoked`, `key_expired`,
                `key_owner_removed`; 429 `rate_limited` (RateLimited); 403 `workspace_suspended`.
        """
        accounts = self.engine.accounts
        principal = accounts.authenticate(token)
        self.rate_limit.take(principal.key.key_id)
        reason = accounts.suspension(principal.workspace)
        if reason is not None:
            # TODO(lead): a core.errors class (code "workspace_suspended", 403) once it exists.
            raise WorkspaceSuspended(f"workspace {principal.workspace} is suspended: {reason}")
        return principal

    def list(self, workspace: str, *, actor: Actor) -> builtins.list[KeyInfo]:
        """The workspace's keys, oldest first, without secrets."""
        workspace = actor.require(workspace, scope="admin", action="keys:read", doing="list API keys")
        return [KeyInfo.of(k) for k in self.engine.accounts.keys(workspace)]

    def create(
        self, workspace: str, *, name: str, scopes: builtins.list[str], expires_in: timedelta | None = None,
        created_by: str | None = None, actor: Actor,
    ) -> IssuedKey:  # fmt: skip
        """A new key; a key's new key acts for the same member, an operator's for `created_by`.

        Raises:
            Forbidden: scopes the calling key lacks, or a key for another member.
            AccessError: `invalid_scope` (422), `not_a_member` (the member the key would act for is not one).
        """
        workspace = actor.require(workspace, scope="admin", action="keys:write", doing="create an API key")
        unknown = sorted({s for s in scopes if s not in SCOPES})
        if unknown:
            raise InvalidScope(f"unknown scopes {', '.join(unknown)}; use {', '.join(SCOPES)}")
        if isinstance(actor, Principal):
            extra = [s for s in scopes if s not in actor.key.scopes]
            if extra:
                raise Forbidden(f"a key cannot grant scopes it does not hold: {', '.join(extra)}")
            if created_by is not None and created_by != actor.key.created_by:
                raise Forbidden(f"a key creates keys only for its own member ({actor.key.created_by})")
            created_by = actor.key.created_by
        elif created_by is None:
            raise InvalidRequest("name the member the new key acts for (created_by)")
        full, key = self.engine.accounts.create_key(workspace, name=name, scopes=scopes, created_by=created_by,
                                                    actor=actor.actor, expires_in=expires_in)  # fmt: skip
        return IssuedKey(key=full, **KeyInfo.of(key).model_dump())

    def revoke(self, key_id: str, *, workspace: str, actor: Actor) -> RevokedKey:
        """Revoke a key (revoking a revoked key changes nothing).

        Raises:
            NotFound: no such key in the workspace.
            Forbidden: not the key's member and not outranking them.
        """
        workspace = actor.require(workspace, scope="admin", action="keys:write", doing="revoke an API key")
        self._may_manage(actor, self._key(workspace, key_id), "revoke")
        key = self.engine.accounts.revoke_key(workspace, key_id, actor=actor.actor)
        return RevokedKey(**KeyInfo.of(key).model_dump())

    def rotate(self, key_id: str, *, workspace: str, grace: timedelta = timedelta(hours=24), actor: Actor) -> IssuedKey:
        """A new key with the old one's name, scopes and member; the old one keeps working for `grace`.

        Raises:
            NotFound: no such key in the workspace.
            Forbidden: scopes the calling key lacks, or a key it may not manage.
            AccessError: `key_revoked` (409).
        """
        workspace = actor.require(workspace, scope="admin", action="keys:write", doing="rotate an API key")
        old = self._key(workspace, key_id)
        # The new key is handed to the caller: it may hold nothing the caller's own key lacks.
        if isinstance(actor, Principal):
            extra = [s for s in old.scopes if s not in actor.key.scopes]
            if extra:
                raise Forbidden(f"a key cannot rotate a key with scopes it lacks: {', '.join(extra)}")
        self._may_manage(actor, old, "rotate")
        full, key = self.engine.accounts.rotate_key(workspace, key_id, actor=actor.actor, grace=grace)
        return IssuedKey(key=full, **KeyInfo.of(key).model_dump())

    def _key(self, workspace: str, key_id: str) -> ApiKey:
        found = next((k for k in self.engine.accounts.keys(workspace) if k.key_id == key_id), None)
        if found is None:
            raise NotFound(f"no key {key_id} in workspace {workspace}")
        return found

    def _may_manage(self, actor: Actor, key: ApiKey, verb: str) -> None:
        """A key manages its own member's keys; an owner's or admin's also those of members of no higher role."""
        if not isinstance(actor, Principal) or key.created_by == actor.key.created_by:
            return
        creator = self.engine.accounts.role(key.workspace, key.created_by) or "viewer"
        if not (actor.role in ("owner", "admin") and ROLES.index(actor.role) <= ROLES.index(creator)):
            raise Forbidden(f"{actor.role} {actor.key.created_by} may not {verb} a key of {creator} {key.created_by}")
