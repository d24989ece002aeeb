"""The HTTP API (`batchrouter serve`): a Starlette app. Every error carries a stable code, a message
and a reference that also appears in the server log."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batchrouter.billing import SignatureError, handle_webhook
from batchrouter.config import Settings
from batchrouter.errors import ConfigError
from batchrouter.ledger import Ledger

log = logging.getLogger("batchrouter.api")


def error(status: int, code: str, message: str) -> JSONResponse:
    reference = f"err_{uuid.uuid4().hex[:16]}"
    log.warning("%s %s %s: %s", reference, status, code, message)
    return JSONResponse({"error": {"code": code, "message": message, "reference": reference}}, status_code=status)


def create_app(settings: Settings) -> Starlette:
    ledger = Ledger(settings.database)

    async def stripe_webhook(request: Request) -> JSONResponse:
        payload = await request.body()  # the raw bytes: the signature covers them exactly
        try:
            result: dict[str, Any] = handle_webhook(settings, ledger, payload, request.headers.get("stripe-signature"))
        except SignatureError as exc:
            return error(400, "invalid_signature", str(exc))
        except ConfigError as exc:
            return error(503, "not_configured", str(exc))
        return JSONResponse(result)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/stripe/webhook", stripe_webhook, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
