"""The endpoints under /v1: each authenticates (a dependency), calls one engine service method, returns its result.

Handlers are plain functions: FastAPI runs them in its thread pool, so the engine's blocking calls
(DuckDB, storage) never hold the event loop. Bodies are read by dependencies, within their limits.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from batchrouter.access.keys import IssuedKey, RevokedKey
from batchrouter.api import models as m
from batchrouter.api.access import Authorise, Caller, Endpoint
from batchrouter.api.bodies import decoded, read_body
from batchrouter.api.errors import DialectRule, ErrorResponse, GuardedRoute
from batchrouter.api.executor import Executor
from batchrouter.api.multipart import Part, parse_form, text_field
from batchrouter.batches.results import QuoteSummary
from batchrouter.core.errors import ConfigError, InvalidRequest, NotConfigured, SignatureError
from batchrouter.engine import BatchRouter
from batchrouter.money.credits import CheckoutSession, CreditBalance, StripeFulfilment, StripeIgnored
from batchrouter.output.files import FileDeleted, FileObject
from batchrouter.output.reports import BatchLinks
from batchrouter.output.webhooks import NewWebhook, RemovedWebhook

router = APIRouter(route_class=GuardedRoute)
ENDPOINTS: list[Endpoint] = []
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "A client error: a stable code, a message and a reference"}
}
# An operation that needs a setting this server may lack (Stripe's keys) says so with 503.
_UNCONFIGURED: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "This server lacks a setting the operation needs: `config_error`"}
}
_BINARY = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
F = TypeVar("F", bound=Callable[..., Any])


def endpoint(
    method: str, path: str, summary: str, model: Any, *, status: int = 200, scope: str | None = None,
    action: str | None = None, upload: bool = False, raw_body: bool = False,
    dialect: DialectRule = None, **options: Any,
) -> Callable[[F], F]:  # fmt: skip
    """Register a handler for `method path`, in the endpoint table and in the app's routes.

    `dialect` ("openai", "anthropic", or a function of the body read) is the one its refusals speak
    (`errors.GuardedRoute`), from before the body is read.
    """
    e = Endpoint(method, path, summary, scope, action, upload)
    ENDPOINTS.append(e)

    def register(handler: F) -> F:
        if raw_body:
            options["openapi_extra"] = {"requestBody": {"required": True, **_BINARY}}
        responses = {**_ERRORS, **options.pop("responses", {})}
        # Dependencies of its own (Anthropic's version header) run before the key is checked.
        dependencies = [*options.pop("dependencies", []), *([Depends(Authorise(e))] if scope else [])]
        router.add_api_route(
            path, handler, methods=[method], summary=summary, response_model=model, status_code=status,
            responses=responses, operation_id=handler.__name__,
            description=e.requirement if scope else None,
            dependencies=dependencies or None, route_class_override=GuardedRoute.speaking(dialect), **options,
        )  # fmt: skip
        return handler

    return register


def engine_of(request: Request) -> BatchRouter:
    engine: BatchRouter = request.app.state.engine
    return engine


def executor_of(request: Request) -> Executor:
    executor: Executor = request.app.state.executor
    return executor


Engine = Annotated[BatchRouter, Depends(engine_of)]


def manifest_name(filename: str = "manifest.csv") -> str:
    name = posixpath.basename(filename)
    if not _SAFE_NAME.match(name):
        raise InvalidRequest("filename: use letters, digits, '.', '-' or '_' (e.g. items.jsonl)")
    return name


async def manifest_upload(request: Request) -> bytes:
    """The manifest as sent (gzip or not), within the upload limit."""
    data = await read_body(request)
    return await run_in_threadpool(decoded, request, data, request.app.state.upload_limit, "the manifest")


async def stripe_delivery(request: Request) -> tuple[bytes, str]:
    # Unauthenticated: refuse what is not even signed before reading a byte.
    signature = request.headers.get("stripe-signature")
    if not signature:
        raise SignatureError("missing Stripe-Signature header")
    return await read_body(request), signature


# -- quotes and batches -----------------------------------------------------------------------------
@endpoint("POST", "/v1/quotes", "Preview a quote", QuoteSummary, status=201, scope="batches:write",
          action="batches:write", upload=True, raw_body=True)  # fmt: skip
def create_quote(
    caller: Caller, engine: Engine, name: Annotated[str, Depends(manifest_name)],
    data: Annotated[bytes, Depends(manifest_upload)],
    deadline: Annotated[str | None, Query(max_length=32, description="answer every item within this long (24h, "
                                          "4h, 30m): each route takes the cheapest lane that makes it")] = None,
) -> Any:  # fmt: skip
    return engine.batches.preview(data, filename=name, workspace=caller.workspace, keep=True, deadline=deadline)


@endpoint("GET", "/v1/quotes/{quote_id}", "Read a quote", m.StoredQuote, scope="batches:read", action="batches:read")
def get_quote(quote_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.batches.quote(quote_id, workspace=caller.workspace)


def batches_dialect(body: Any) -> str | None:
    """POST /v1/batches is OpenAI's create unless the body is BatchRouter's own (`quote_id`): a body that is not
    JSON, or not an object, or OpenAI's fields, is refused in OpenAI's dialect."""
    return None if isinstance(body, dict) and "quote_id" in body else "openai"


@endpoint("POST", "/v1/batches", "Create a batch", m.Batch, status=201, scope="batches:write", action="batches:write",
          responses={200: {"model": m.Batch, "description": "The batch made before from this input"}},
          dialect=batches_dialect)  # fmt: skip
def create_batch(
    body: m.CreateBatch, caller: Caller, engine: Engine, executor: Annotated[Executor, Depends(executor_of)],
    request: Request, response: Response,
) -> Any:  # fmt: skip
    if body.input_file_id is not None:  # OpenAI's Batch API
        request.state.dialect = "openai"
        assert body.endpoint is not None and body.completion_window is not None
        expires = body.output_expires_after.seconds if body.output_expires_after else None
        made = engine.openai.create(body.input_file_id, workspace=caller.workspace, actor=caller,
                                    endpoint=body.endpoint, completion_window=body.completion_window,
                                    metadata=body.metadata, output_expires_after_s=expires)  # fmt: skip
        if not made.model_extra or not made.model_extra.get("created"):
            response.status_code = 200
            return made
        return engine.openai.describe(executor.start(made.id), created=True)
    # Creating a batch from a quote is the customer's approval of that quote.
    view = engine.batches.create(workspace=caller.workspace, quote_id=body.quote_id, run_tag=body.run_tag,
                                 actor=caller, approve=True)  # fmt: skip
    if not view.created:
        response.status_code = 200
        return engine.openai.describe(view)
    return engine.openai.describe(executor.start(view.batch_id), created=True)


@endpoint("GET", "/v1/batches", "List batches", m.Batches, scope="batches:read", action="batches:read")
def list_batches(
    caller: Caller, engine: Engine, after: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="batches per page (newest first)")] = 20,
) -> Any:  # fmt: skip
    found = engine.openai.list(caller.workspace, after=after, limit=limit)
    return {**found.model_dump(), "batches": found.data}


@endpoint("GET", "/v1/batches/{batch_id}", "Read a batch", m.Batch, scope="batches:read", action="batches:read")
def get_batch(batch_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.openai.retrieve(batch_id, workspace=caller.workspace)


@endpoint("POST", "/v1/batches/{batch_id}/cancel", "Cancel a batch", m.Batch, scope="batches:write",
          action="batches:write")  # fmt: skip
def cancel_batch(batch_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.openai.cancel(batch_id, actor=caller, workspace=caller.workspace)


# -- files (OpenAI's Files API) ---------------------------------------------------------------------
async def file_upload(request: Request) -> dict[str, Part]:
    """The multipart form, within the upload limit."""
    data = await read_body(request)
    return await run_in_threadpool(parse_form, request.headers.get("content-type", ""), data)


@endpoint("POST", "/v1/files", "Upload a file", FileObject, scope="batches:write", action="batches:write",
          upload=True, openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
              "schema": {"type": "object", "required": ["file", "purpose"], "properties": {
                  "file": {"type": "string", "format": "binary"}, "purpose": {"type": "string", "enum": ["batch"]},
                  "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                  "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000}}}}}}},
          dialect="openai")  # fmt: skip
def upload_file(caller: Caller, engine: Engine, form: Annotated[dict[str, Part], Depends(file_upload)]) -> Any:
    upload = form.get("file")
    if upload is None or upload.filename is None:
        raise InvalidRequest("file: the form needs the file as a part named 'file' with a filename", param="file")
    purpose = text_field(form, "purpose", required=True)
    assert purpose is not None
    seconds = text_field(form, "expires_after[seconds]")
    if seconds is not None and not seconds.isdigit():
        raise InvalidRequest("expires_after[seconds]: a whole number of seconds", param="expires_after[seconds]")
    return engine.files.create(upload.data, workspace=caller.workspace, filename=upload.filename, purpose=purpose,
                               expires_after_anchor=text_field(form, "expires_after[anchor]"),
                               expires_after_seconds=int(seconds) if seconds is not None else None)  # fmt: skip


@endpoint("GET", "/v1/files", "List files", m.Files, scope="batches:read", action="batches:read",
          dialect="openai")  # fmt: skip
def list_files(
    caller: Caller, engine: Engine, purpose: Annotated[str | None, Query(max_length=32)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000, order: Literal["asc", "desc"] = "desc",
) -> Any:  # fmt: skip
    found = engine.files.list(caller.workspace, purpose=purpose, after=after, limit=limit, order=order)
    return {"data": found.items, "first_id": found.items[0].id if found.items else None,
            "last_id": found.items[-1].id if found.items else None, "has_more": found.has_more}  # fmt: skip


@endpoint("GET", "/v1/files/{file_id}", "Read a file's object", FileObject, scope="batches:read",
          action="batches:read", dialect="openai")  # fmt: skip
def get_file(file_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.files.get(file_id, workspace=caller.workspace)


@endpoint("GET", "/v1/files/{file_id}/content", "Download a file", None, scope="batches:read", action="batches:read",
          response_class=Response, responses={200: _BINARY}, dialect="openai")  # fmt: skip
def file_content(file_id: str, caller: Caller, engine: Engine) -> Any:
    return Response(engine.files.content(file_id, workspace=caller.workspace), media_type="application/octet-stream")


@endpoint("DELETE", "/v1/files/{file_id}", "Delete a file", FileDeleted, scope="batches:write", action="batches:write",
          dialect="openai")  # fmt: skip
def delete_file(file_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.files.delete(file_id, workspace=caller.workspace)


@endpoint("GET", "/v1/batches/{batch_id}/links", "Get signed links", BatchLinks, scope="batches:read",
          action="batches:read")  # fmt: skip
def batch_links(batch_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.reports.links(batch_id, workspace=caller.workspace)


@endpoint("GET", "/v1/artifacts/{workspace}/{batch_id}/{artifact}", "Download a signed artifact", None,
          response_class=Response, responses={200: _BINARY})  # fmt: skip
def artifact(workspace: str, batch_id: str, artifact: str, engine: Engine, expires: int = 0, sig: str = "") -> Any:
    found = engine.reports.artifact(artifact, workspace=workspace, batch_id=batch_id, expires=expires, sig=sig)
    return Response(found.data, media_type=found.media_type)


# -- credits ------------------------------------------------------------------------------------------
@endpoint("GET", "/v1/credits", "Read the credit balance", CreditBalance, scope="credits:read", action="credits:read")
def credits(caller: Caller, engine: Engine) -> Any:
    return engine.credits.balance(caller.workspace)


@endpoint("GET", "/v1/credits/history", "Read credit history", m.History, scope="credits:read",
          action="credits:read")  # fmt: skip
def credit_history(caller: Caller, engine: Engine) -> Any:
    return {"entries": engine.credits.history(caller.workspace)}


@endpoint("POST", "/v1/credits/checkout", "Buy credits", CheckoutSession, status=201, scope="credits:write",
          action="credits:write", responses=_UNCONFIGURED)  # fmt: skip
def checkout(body: m.Checkout, caller: Caller, engine: Engine) -> Any:
    return engine.credits.checkout(caller.workspace, pack=body.pack, actor=caller)


@endpoint(
    "POST",
    "/v1/stripe/webhook",
    "Receive a Stripe webhook",
    StripeIgnored | StripeFulfilment,
    raw_body=True,
    responses=_UNCONFIGURED,
)
def stripe_webhook(engine: Engine, delivery: Annotated[tuple[bytes, str], Depends(stripe_delivery)]) -> Any:
    payload, signature = delivery
    try:
        return engine.credits.stripe_webhook(payload, signature=signature)
    except ConfigError as exc:  # this server cannot check signatures: Stripe's dashboard shows it as such
        raise NotConfigured(str(exc)) from exc


# -- members and keys ---------------------------------------------------------------------------------
@endpoint("GET", "/v1/members", "List members", m.Members, scope="admin", action="members:read")
def list_members(caller: Caller, engine: Engine) -> Any:
    return {"members": engine.members.list(caller.workspace, actor=caller)}


@endpoint("PUT", "/v1/members/{email}", "Add or change a member", m.Members, scope="admin", action="members:write")
def set_member(email: str, body: m.SetMember, caller: Caller, engine: Engine) -> Any:
    return {"members": engine.members.set(email, workspace=caller.workspace, role=body.role, actor=caller)}


@endpoint("DELETE", "/v1/members/{email}", "Remove a member", m.Members, scope="admin", action="members:write")
def remove_member(email: str, caller: Caller, engine: Engine) -> Any:
    return {"members": engine.members.remove(email, workspace=caller.workspace, actor=caller)}


@endpoint("GET", "/v1/keys", "List API keys", m.Keys, scope="admin", action="keys:read")
def list_keys(caller: Caller, engine: Engine) -> Any:
    return {"keys": engine.keys.list(caller.workspace, actor=caller)}


@endpoint("POST", "/v1/keys", "Create an API key", IssuedKey, status=201, scope="admin", action="keys:write")
def create_key(body: m.CreateKey, caller: Caller, engine: Engine) -> Any:
    expires_in = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    return engine.keys.create(caller.workspace, name=body.name, scopes=body.scopes, expires_in=expires_in,
                              actor=caller)  # fmt: skip


@endpoint("POST", "/v1/keys/{key_id}/revoke", "Revoke an API key", RevokedKey, scope="admin", action="keys:write")
def revoke_key(key_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.keys.revoke(key_id, workspace=caller.workspace, actor=caller)


@endpoint("POST", "/v1/keys/{key_id}/rotate", "Rotate an API key", IssuedKey, status=201, scope="admin",
          action="keys:write")  # fmt: skip
def rotate_key(key_id: str, caller: Caller, engine: Engine, body: m.RotateKey | None = None) -> Any:
    grace = timedelta(hours=(body or m.RotateKey()).grace_hours)
    return engine.keys.rotate(key_id, workspace=caller.workspace, grace=grace, actor=caller)


# -- webhooks -----------------------------------------------------------------------------------------
@endpoint("GET", "/v1/webhooks", "List webhook endpoints", m.Webhooks, scope="admin", action="webhooks:read")
def list_webhooks(caller: Caller, engine: Engine) -> Any:
    return {"webhooks": engine.webhooks.list(caller.workspace, actor=caller)}


@endpoint("POST", "/v1/webhooks", "Add a webhook endpoint", NewWebhook, status=201, scope="admin",
          action="webhooks:write")  # fmt: skip
def add_webhook(body: m.AddWebhook, caller: Caller, engine: Engine) -> Any:
    return engine.webhooks.add(body.url, workspace=caller.workspace, actor=caller)


@endpoint("DELETE", "/v1/webhooks/{endpoint_id}", "Remove a webhook endpoint", RemovedWebhook, scope="admin",
          action="webhooks:write")  # fmt: skip
def remove_webhook(endpoint_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.webhooks.remove(endpoint_id, workspace=caller.workspace, actor=caller)


@endpoint("GET", "/healthz", "Health check", m.Health)
def health() -> Any:
    return {"ok": True}
