"""Who may call an endpoint: the endpoint table, and the Bearer key dependency.

Every endpoint but the Stripe webhook, signed artifact downloads, /healthz and /openapi.json needs
`Authorization: Bearer br_...` (or `x-api-key: br_...`, as Anthropic's SDK sends it); each names the
key scope and the role action it needs. The rules
themselves (what a scope or role allows, suspension, key states, the per-key rate limit) are the
engine's; this module only asks them, once per request, before the body is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchrouter.access.accounts import Principal


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    scope: str | None = None  # None: no API key (its own authentication, or public)
    action: str | None = None
    upload: bool = False  # the body is a manifest (the upload limit), not a JSON body

    @property
    def requirement(self) -> str:
        return f"Needs scope `{self.scope}` and role action `{self.action}`."


bearer = HTTPBearer(scheme_name="apiKey", description="br_<prefix>_<secret>", auto_error=False)


class Authorise:
    """The dependency of one keyed endpoint: the caller's principal, held to the endpoint's needs."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def __call__(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        engine = request.app.state.engine
        token = credentials.credentials if credentials else request.headers.get("x-api-key")
        principal: Principal = engine.keys.authenticate(token or None)
        e = self.endpoint
        assert e.scope is not None and e.action is not None
        principal.require(principal.workspace, scope=e.scope, action=e.action, doing=e.summary.lower())
        request.state.principal = principal
        return principal


def caller(request: Request) -> Principal:
    """The principal `Authorise` admitted for this request."""
    principal: Principal = request.state.principal
    return principal


Caller = Annotated[Principal, Depends(caller)]
