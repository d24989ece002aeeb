"""How the API answers a refusal: `{"error": {"code", "message", "reference"}}`, the reference logged.

Any `BatchRouterError` answers with its own `code` and `http_status` (the engine's hierarchy decides
both); validation errors answer 422 `invalid_request` with "field: message"; routing errors (unknown
path, wrong method) their HTTP status; anything else 500 `internal_error`, the traceback only logged.
"""

from __future__ import annotations

import logging
import math
import traceback
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from batchrouter.core.errors import BatchRouterError, PayloadTooLarge

log = logging.getLogger("batchrouter.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    reference: str


class ErrorResponse(BaseModel):
    """Every refusal: a stable code, a message saying what to do, and a reference found in the server log."""

    error: ErrorBody


# -- the API's own refusal while FastAPI reads a body -------------------------------------------------
class BodyTooLarge(HTTPException):
    """A body over its limit, found while FastAPI reads it (an HTTPException, so its body parsing passes
    it on unchanged); answered as `payload_too_large` (core.errors.PayloadTooLarge's code)."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=PayloadTooLarge.http_status, detail=message)

    def __str__(self) -> str:
        return str(self.detail)


# -- answers -------------------------------------------------------------------------------------------
def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    reference = f"err_{uuid.uuid4().hex[:16]}"
    log.warning("%s %s %s: %s", reference, status, code, message)
    body = ErrorResponse(error=ErrorBody(code=code, message=message, reference=reference))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def on_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchRouterError)
    retry_after = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return error_response(exc.http_status, exc.code, str(exc), headers)


def on_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"][1:]) or "body"  # the field, not "body"/"query"/"path"
    message = "the body is not valid JSON" if first["type"] == "json_invalid" else first["msg"]
    return error_response(422, "invalid_request", f"{where}: {message}")


def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, BodyTooLarge):
        return error_response(exc.status_code, PayloadTooLarge.code, str(exc))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


def internal_error(request: Request) -> Response:
    reference = f"err_{uuid.uuid4().hex[:16]}"
    log.error("%s unhandled error on %s %s\n%s", reference, request.method, request.url.path, traceback.format_exc())
    body = ErrorResponse(error=ErrorBody(code="internal_error", message="unexpected server error", reference=reference))
    return JSONResponse(body.model_dump(), status_code=500)


class GuardedRoute(APIRoute):
    """A route whose unexpected exceptions answer 500 `internal_error` instead of reaching the server.

    (Starlette sends handlers for `Exception` to its outermost middleware, which re-raises after
    answering; the guard keeps the failure inside the request.)
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (BatchRouterError, HTTPException, RequestValidationError):
                raise
            except Exception:
                return internal_error(request)

        return guarded


def install(app: FastAPI) -> None:
    app.add_exception_handler(BatchRouterError, on_refusal)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http_error)
