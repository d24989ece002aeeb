"""The FastAPI application: routes, error handlers, body limits, and the OpenAPI document at /openapi.json."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from batchrouter.api import anthropic_routes, errors
from batchrouter.api.access import Endpoint
from batchrouter.api.bodies import BodyLimit
from batchrouter.api.executor import Executor
from batchrouter.api.routes import ENDPOINTS, router
from batchrouter.core.config import Settings
from batchrouter.engine import BatchRouter

_FACES = (anthropic_routes,)  # modules that register their routes on `router` when imported
STOP_WAIT_S = 60.0  # how long a stopping server lets background runs finish
OPENAPI = Endpoint("GET", "/openapi.json", "This document")


def create_app(settings: Settings, *, engine: BatchRouter | None = None) -> FastAPI:
    """The API over `engine` (by default a new one on `settings`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.executor.start_polling()
        yield
        await run_in_threadpool(app.state.executor.wait, STOP_WAIT_S)

    app = FastAPI(title="BatchRouter API", version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.engine = engine = engine or BatchRouter(settings)
    app.state.executor = Executor(engine, settings.api.executor)
    app.state.upload_limit = min(settings.api.max_upload_bytes, settings.limits.max_manifest_bytes)
    uploads = {e.path for e in ENDPOINTS if e.upload}
    body_limit, upload_limit = settings.api.max_body_bytes, app.state.upload_limit

    def limits(path: str) -> tuple[int, str]:
        if path in uploads:
            return upload_limit, "the manifest"
        return body_limit, "the webhook body" if path == "/v1/stripe/webhook" else "the request body"

    app.include_router(router)
    app.add_api_route(OPENAPI.path, openapi, methods=[OPENAPI.method], summary=OPENAPI.summary,
                      operation_id="openapi", response_model=dict[str, Any])  # fmt: skip
    errors.install(app)
    app.add_middleware(BodyLimit, limits=limits)
    return app


def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def endpoints() -> list[Endpoint]:
    """Every endpoint the app serves, with the key scope and role action it needs."""
    return [*ENDPOINTS, OPENAPI]


def serve(settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
