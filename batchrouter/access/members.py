"""The members service: who belongs to a workspace, with which role, and who may change that.

Rules: only an owner makes an owner, changes an owner's role or removes an owner; a workspace keeps
at least one owner (`batchrouter.access.accounts`, in the same transaction as the change).
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from batchrouter.access.accounts import Principal
from batchrouter.access.actors import Actor
from batchrouter.core.errors import Forbidden, NotFound
from batchrouter.core.identity import canonical_email
from batchrouter.core.results import Timestamp

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter


class Member(BaseModel):
    """A member of a workspace, as `GET /v1/members` lists it."""

    email: str
    role: str
    added_at: Timestamp

    @classmethod
    def of(cls, row: dict[str, Any]) -> Member:
        return cls.model_validate(row)


class Members:
    def __init__(self, engine: BatchRouter) -> None:
        self.engine = engine

    def list(self, workspace: str, *, actor: Actor) -> builtins.list[Member]:
        """The workspace's members, by email."""
        workspace = actor.require(workspace, scope="admin", action="members:read", doing="list members")
        return [Member.of(m) for m in self.engine.accounts.members(workspace)]

    def set(self, email: str, *, workspace: str, role: str, actor: Actor) -> builtins.list[Member]:
        """Add a member or change their role; returns the workspace's members after it.

        Raises:
            Forbidden: not an owner making an owner or changing an owner's role; or outside the key's powers.
            AccessError: `invalid_role` (422), `last_owner` (409: the only owner would stop being one).
            IdentityError: the email or workspace is not valid.
        """
        workspace = actor.require(workspace, scope="admin", action="members:write", doing="add or change a member")
        email = canonical_email(email)
        accounts = self.engine.accounts
        if isinstance(actor, Principal) and actor.role != "owner":
            if role == "owner":
                raise Forbidden("only an owner can make another owner")
            if accounts.role(workspace, email) == "owner":
                raise Forbidden("only an owner can change an owner's role")
        accounts.set_member(workspace, email, role, actor=actor.actor)
        return self.list(workspace, actor=actor)

    def remove(self, email: str, *, workspace: str, actor: Actor) -> builtins.list[Member]:
        """Remove a member; returns the workspace's members after it.

        Raises:
            NotFound: not a member. Forbidden: not an owner removing an owner.
            AccessError: `last_owner` (409).
        """
        workspace = actor.require(workspace, scope="admin", action="members:write", doing="remove a member")
        email = canonical_email(email)
        accounts = self.engine.accounts
        if isinstance(actor, Principal) and actor.role != "owner" and accounts.role(workspace, email) == "owner":
            raise Forbidden("only an owner can remove an owner")
        if not accounts.remove_member(workspace, email, actor=actor.actor):
            raise NotFound(f"{email} is not a member of {workspace}")
        return self.list(workspace, actor=actor)
