"""Who may call an endpoint: the endpoint table, the Bearer key dependency and the per-key rate limit.

Every endpoint but the Stripe webhook, signed artifact downloads, /healthz and /openapi.json needs
`Authorization: Bearer br_...`; each names the key scope and the role action it needs. The rules
themselves (what a scope or role allows, suspension, key states) are the engine's; this module only
asks them, once per request, before the body is parsed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchrouter.access.accounts import AccessError, Principal
from batchrouter.api.errors import RateLimited


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


class RateLimiter:
    """A token bucket per key: `per_minute` refill, `burst` capacity."""

    def __init__(self, *, per_minute: int, burst: int) -> None:
        self.rate, self.capacity = per_minute / 60.0, float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key_id: str) -> None:
        with self.lock:
            now = time.monotonic()
            level, stamp = self.buckets.get(key_id, (self.capacity, now))
            level = min(self.capacity, level + (now - stamp) * self.rate)
            if level < 1:
                wait = (1 - level) / self.rate
                self.buckets[key_id] = (level, now)
                raise RateLimited(f"too many requests for this key; retry in {wait:.1f} s",
                                  retry_after_s=max(1, int(wait + 0.999)))  # fmt: skip
            self.buckets[key_id] = (level - 1, now)


class Authorise:
    """The dependency of one keyed endpoint: the caller's principal, held to the endpoint's needs."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def __call__(
        self, request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Principal:
        engine, limiter = request.app.state.engine, request.app.state.limiter
        principal: Principal = engine.keys.authenticate(credentials.credentials if credentials else None)
        limiter.take(principal.key.key_id)
        e = self.endpoint
        assert e.scope is not None and e.action is not None
        reason = engine.accounts.suspension(principal.workspace)
        if reason is not None:
            raise AccessError("workspace_suspended", f"workspace {principal.workspace} is suspended: {reason}", 403)
        if not principal.allows(e.scope, e.action):
            raise AccessError("forbidden", f"this key (scopes {', '.join(principal.key.scopes)}; role "
                              f"{principal.role}) may not {e.summary.lower()}: it needs scope {e.scope} and "
                              f"role action {e.action}", 403)  # fmt: skip
        request.state.principal = principal
        return principal


def caller(request: Request) -> Principal:
    """The principal `Authorise` admitted for this request."""
    principal: Principal = request.state.principal
    return principal


Caller = Annotated[Principal, Depends(caller)]
