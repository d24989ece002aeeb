"""The HTTP API (`batchrouter serve`): a FastAPI app under /v1, a thin face over the engine.

Every request but the Stripe webhook, signed artifact downloads, /healthz and /openapi.json needs
`Authorization: Bearer br_...`. Each endpoint names the key scope and the role action it needs
(`endpoints()`); a key only ever sees its own workspace (other workspaces' batches and quotes answer
404, as if they did not exist). Every error carries a stable code, a message and a reference that
also appears in the server log. Keys are rate limited (token bucket): 429 with Retry-After.

    app.py       create_app, serve: the routes, error handlers and body limits put together
    routes.py    the handlers: authenticate, call one engine service method, return its result
    access.py    the endpoint table, the Bearer key dependency, the per-key rate limit
    bodies.py    bounded bodies (413 before an oversized body is read; gzip bounded)
    errors.py    the error body, and any error mapped by its `code` and `http_status`
    executor.py  who runs a created batch: a server thread (inline) or the Dagster sensor
    models.py    the request and response models the OpenAPI document describes
"""

from batchrouter.api.access import Endpoint
from batchrouter.api.app import create_app, endpoints, serve

__all__ = ["Endpoint", "create_app", "endpoints", "serve"]
