"""The webhooks service: a workspace's webhook endpoints, and the outbox of deliveries to them.

Rules: an endpoint URL must be a public http(s) URL (`delivery.check_url`; private addresses only
with `delivery.allow_private_endpoints`); adding and removing an endpoint each write one audit event
(`webhook.added`, `webhook.removed`); its signing secret is shown once.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from batchrouter.access.actors import Actor
from batchrouter.core.results import Timestamp
from batchrouter.output import delivery

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

SECRET_NOTE = "store the secret now: it signs every delivery and is never shown again"


class WebhookEndpoint(BaseModel):
    """An endpoint as listed, without its secret; `failures` counts events that exhausted their retries."""

    endpoint_id: str
    workspace: str
    url: str
    enabled: bool
    disabled_reason: str | None
    created_at: Timestamp
    failures: int


class NewWebhook(BaseModel):
    endpoint_id: str
    url: str
    secret: str
    note: str = SECRET_NOTE


class RemovedWebhook(BaseModel):
    removed: str


class Webhooks:
    def __init__(self, engine: BatchRouter) -> None:
        self.engine = engine

    def list(self, workspace: str, *, actor: Actor) -> builtins.list[WebhookEndpoint]:
        """The workspace's endpoints, oldest first."""
        workspace = actor.require(workspace, scope="admin", action="webhooks:read", doing="list webhook endpoints")
        found = delivery.list_endpoints(self.engine.settings, workspace)
        return [WebhookEndpoint.model_validate(asdict(e)) for e in found]

    def add(self, url: str, *, workspace: str, actor: Actor) -> NewWebhook:
        """Register an endpoint; its signing secret is in the result, and nowhere else ever again.

        Raises:
            EndpointRefused: not a usable public http(s) URL (code `endpoint_refused`).
        """
        workspace = actor.require(workspace, scope="admin", action="webhooks:write", doing="add a webhook endpoint")
        endpoint_id, secret = delivery.add_endpoint(self.engine.settings, workspace, url)
        self.engine.accounts.record(workspace, actor.actor, "webhook.added", endpoint_id, after={"url": url})
        return NewWebhook(endpoint_id=endpoint_id, url=url, secret=secret)

    def remove(self, endpoint_id: str, *, workspace: str, actor: Actor) -> RemovedWebhook:
        """Delete an endpoint (its recorded attempts stay).

        Raises:
            EndpointNotFound: no such endpoint in the workspace.
        """
        workspace = actor.require(workspace, scope="admin", action="webhooks:write",
                            doing="remove a webhook endpoint")  # fmt: skip
        delivery.remove_endpoint(self.engine.settings, workspace, endpoint_id)
        self.engine.accounts.record(workspace, actor.actor, "webhook.removed", endpoint_id)
        return RemovedWebhook(removed=endpoint_id)

    def drain(self, *, now: datetime | None = None) -> builtins.list[delivery.Attempt]:
        """Send the deliveries that are due, once each (never sleeps); what the outbox schedule runs."""
        return delivery.drain(self.engine.settings, now=now)
