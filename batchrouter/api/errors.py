"""How the API answers a refusal: `{"error": {"code", "message", "type", "param", "reference"}}`, the reference logged.

Any `BatchRouterError` answers with its own `code` and `http_status` (the engine's hierarchy decides
both); validation errors answer 422 `invalid_request` with "field: message"; routing errors (unknown
path, wrong method) their HTTP status; anything else 500 `internal_error`, the traceback only logged.

The body is also OpenAI's error object (`message`, `type`, `param`, `code`), so OpenAI's SDK reads
it. Each refusal says `x-should-retry` by its class's `retryable` (that SDK retries 409 and 429 on
its own otherwise), and `Retry-After` is at most `RETRY_AFTER_MAX_S`: that SDK ignores a longer one.
A request in OpenAI's dialect (its Files and Batch API, `request.state.dialect`) gets OpenAI's status
codes where they differ: 400 for an invalid request, 429 `insufficient_quota` for short credit.
A request in Anthropic's dialect (its Message Batches) gets Anthropic's error body,
`{"type": "error", "error": {"type", "message"}}` (BatchRouter's code, param and reference beside),
Anthropic's error types and its status codes: 400 for an invalid request and for short credit, 529
`overloaded_error` for a busy server. A route declares its dialect (`GuardedRoute.dialect`), so
even a body FastAPI cannot parse, read before any dependency runs, is refused in it.
"""

from __future__ import annotations

import logging
import math
import traceback
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from batchrouter.core.errors import BatchRouterError, PayloadTooLarge

log = logging.getLogger("batchrouter.api")


RETRY_AFTER_MAX_S = 60  # the official OpenAI SDK honours Retry-After up to 120 s and does not retry past it
# OpenAI's status where a client of its dialect expects another than BatchRouter's own.
OPENAI_STATUS = {422: 400}
OPENAI_CODE_STATUS = {"insufficient_credits": 429}
ANTHROPIC_STATUS = {402: 400, 422: 400, 503: 529}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    529: "overloaded_error"}  # fmt: skip
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
          403: "permission_error", 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


class ErrorBody(BaseModel):
    code: str
    message: str
    type: str = Field(description="OpenAI's error type: invalid_request_error, authentication_error, "
                      "permission_error, not_found_error, conflict_error, rate_limit_error, insufficient_quota, "
                      "server_error")  # fmt: skip
    param: str | None = Field(default=None, description="the request field at fault, if one is")
    reference: str


def error_type(status: int, code: str) -> str:
    if code == "insufficient_credits":
        return "insufficient_quota"
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


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
def dialect_of(request: Request) -> str | None:
    dialect: str | None = getattr(request.state, "dialect", None)
    return dialect


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, *, param: str | None = None,
    dialect: str | None = None,
) -> JSONResponse:  # fmt: skip
    reference = f"err_{uuid.uuid4().hex[:16]}"
    log.warning("%s %s %s: %s", reference, status, code, message)
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        error = {"type": kind, "message": message, "code": code, "param": param, "reference": reference}
        return JSONResponse({"type": "error", "error": error}, status_code=status, headers=headers)
    body = ErrorResponse(error=ErrorBody(code=code, message=message, type=error_type(status, code), param=param,
                                         reference=reference))  # fmt: skip
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def status_for(request: Request, status: int, code: str) -> int:
    """The status to answer: BatchRouter's own, or OpenAI's or Anthropic's for a request in its dialect."""
    dialect = dialect_of(request)
    if dialect == "anthropic":
        return ANTHROPIC_STATUS.get(status, status)
    if dialect != "openai":
        return status
    return OPENAI_CODE_STATUS.get(code, OPENAI_STATUS.get(status, status))


def on_refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchRouterError)
    headers = {"x-should-retry": "true" if exc.retryable else "false"}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(min(RETRY_AFTER_MAX_S, max(1, math.ceil(retry_after))))
    return error_response(status_for(request, exc.http_status, exc.code), exc.code, str(exc), headers,
                          param=exc.param, dialect=dialect_of(request))  # fmt: skip


def on_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    rule = getattr(type(request.scope.get("route")), "dialect", None)
    if dialect_of(request) is None and callable(rule):
        request.state.dialect = rule(exc.body)  # a route two dialects share: the body says which
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        where, message = "body", "the body is not valid JSON; send a JSON object"
    else:  # the field, not "body"/"query"/"path"
        where, message = ".".join(str(p) for p in first["loc"][1:]) or "body", first["msg"]
    return error_response(status_for(request, 422, "invalid_request"), "invalid_request", f"{where}: {message}",
                          {"x-should-retry": "false"}, param=where, dialect=dialect_of(request))  # fmt: skip


def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, BodyTooLarge):
        return error_response(exc.status_code, PayloadTooLarge.code, str(exc), dialect=dialect_of(request))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}",
                          dialect=dialect_of(request))  # fmt: skip


def internal_error(request: Request) -> Response:
    reference = f"err_{uuid.uuid4().hex[:16]}"
    log.error("%s unhandled error on %s %s\n%s", reference, request.method, request.url.path, traceback.format_exc())
    if dialect_of(request) == "anthropic":
        error = {"type": "api_error", "message": "unexpected server error", "code": "internal_error",
                 "reference": reference}  # fmt: skip
        return JSONResponse({"type": "error", "error": error}, status_code=500)
    body = ErrorResponse(error=ErrorBody(code="internal_error", message="unexpected server error", type="server_error",
                                         reference=reference))  # fmt: skip
    return JSONResponse(body.model_dump(), status_code=500)


# The dialect a route's refusals speak: a name, or a function of the body read; None: BatchRouter's own.
DialectRule = str | Callable[[Any], str | None] | None
_SPEAKING: dict[str | Callable[[Any], str | None], type[GuardedRoute]] = {}


class GuardedRoute(APIRoute):
    """A route whose unexpected exceptions answer 500 `internal_error` instead of reaching the server.

    (Starlette sends handlers for `Exception` to its outermost middleware, which re-raises after
    answering; the guard keeps the failure inside the request.)

    `dialect` (set by `routes.endpoint`) is the dialect its refusals speak: a name is put on the request
    before FastAPI reads the body, so a body that is not JSON, or over its limit, is refused in it
    too; a function of the body (a route two dialects share) is asked when the body is refused.
    """

    dialect: ClassVar[DialectRule] = None

    @classmethod
    def speaking(cls, dialect: DialectRule) -> type[GuardedRoute]:
        """The route class whose refusals speak `dialect` (a class attribute: it survives `include_router`)."""
        if dialect is None:
            return cls
        if dialect not in _SPEAKING:
            held = staticmethod(dialect) if callable(dialect) else dialect  # a function stays a plain function
            _SPEAKING[dialect] = type(f"{cls.__name__}Speaking", (cls,), {"dialect": held})
        return _SPEAKING[dialect]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            if isinstance(self.dialect, str):
                request.state.dialect = self.dialect
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
