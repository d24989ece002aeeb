"""Who acts on the engine: an API key's principal, or an operator of the installation.

Every service method that changes something takes `actor=`. A `Principal` (an API key of one
workspace, acting for a member with a role) is held to its scopes, role and workspace; an `Operator`
(the `batchrouter` command, Dagster runs and sensors, run by whoever runs the installation) may do
anything in any workspace, and is named in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchrouter.access.accounts import Principal
from batchrouter.core.identity import canonical_workspace


@dataclass(frozen=True)
class Operator:
    """The installation's own operator: the CLI, Dagster runs and sensors."""

    name: str = "cli:operator"

    @property
    def actor(self) -> str:
        return self.name

    def require(self, workspace: str, *, scope: str, action: str, doing: str) -> str:
        """The workspace's canonical name: an operator may do anything anywhere (see `Principal.require`)."""
        return canonical_workspace(workspace)

    def require_operator(self, *, doing: str) -> None:
        """An operator is one."""


Actor = Principal | Operator
CLI = Operator("cli:operator")
DAGSTER = Operator("dagster")
SYSTEM = Operator("batchrouter")
