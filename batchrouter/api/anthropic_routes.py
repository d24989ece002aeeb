"""Anthropic's Message Batches API under /v1/messages/batches, in Anthropic's dialect.

Each route speaks the dialect (`dialect="anthropic"`: its refusals, even of the key or of a body that
is not JSON, in Anthropic's error shape and status codes) and requires the `anthropic-version`
header Anthropic's SDK sends (`anthropic_version`), then the key (`x-api-key` or Bearer, the same
scopes and roles as every route), then calls one `engine.anthropic` method. BatchRouter's options
ride in headers, since Anthropic's body has none: `x-batchrouter-deadline` ("asap", "4h", ...)
and `x-batchrouter-run-tag`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request, Response

from batchrouter.api import models as m
from batchrouter.api.access import Caller
from batchrouter.api.executor import Executor
from batchrouter.api.routes import Engine, endpoint, executor_of
from batchrouter.core.errors import InvalidRequest
from batchrouter.dropin.anthropic import DeletedMessageBatch, MessageBatch, MessageBatchPage

DEADLINE_HEADER, RUN_TAG_HEADER = "x-batchrouter-deadline", "x-batchrouter-run-tag"


def anthropic_version(request: Request) -> None:
    if not request.headers.get("anthropic-version"):
        raise InvalidRequest("anthropic-version: header missing; send the API version, e.g. "
                             "'anthropic-version: 2023-06-01' (Anthropic's SDK sends it)",
                             param="anthropic-version")  # fmt: skip


Anthropic: dict[str, Any] = {"dialect": "anthropic", "dependencies": [Depends(anthropic_version)]}


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


# The body holds the whole batch, as a manifest does: the upload limit applies, not the JSON body's.
@endpoint("POST", "/v1/messages/batches", "Create a message batch", MessageBatch, scope="batches:write",
          action="batches:write", upload=True, **Anthropic)  # fmt: skip
def create_message_batch(
    body: m.CreateMessageBatch, caller: Caller, engine: Engine, executor: Annotated[Executor, Depends(executor_of)],
    request: Request, response: Response,
    deadline: Annotated[str | None, Header(alias=DEADLINE_HEADER, max_length=32)] = None,
    run_tag: Annotated[str | None, Header(alias=RUN_TAG_HEADER, max_length=64)] = None,
) -> Any:  # fmt: skip
    made = engine.anthropic.create(body.requests, workspace=caller.workspace, actor=caller, deadline=deadline,
                                   run_tag=run_tag, base_url=base_url(request))  # fmt: skip
    if not made.model_extra or not made.model_extra.get("created"):
        return made  # made before: the SDK's retry finds it (Anthropic answers 200 either way)
    return engine.anthropic.describe(executor.start(made.id), created=True, base_url=base_url(request))


@endpoint("GET", "/v1/messages/batches", "List message batches", MessageBatchPage, scope="batches:read",
          action="batches:read", **Anthropic)  # fmt: skip
def list_message_batches(
    caller: Caller, engine: Engine, request: Request,
    after_id: Annotated[str | None, Query(max_length=200)] = None,
    before_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="batches per page (newest first)")] = 20,
) -> Any:  # fmt: skip
    return engine.anthropic.list(caller.workspace, after_id=after_id, before_id=before_id, limit=limit,
                                 base_url=base_url(request))  # fmt: skip


@endpoint("GET", "/v1/messages/batches/{batch_id}", "Read a message batch", MessageBatch, scope="batches:read",
          action="batches:read", **Anthropic)  # fmt: skip
def get_message_batch(batch_id: str, caller: Caller, engine: Engine, request: Request) -> Any:
    return engine.anthropic.retrieve(batch_id, workspace=caller.workspace, base_url=base_url(request))


@endpoint("POST", "/v1/messages/batches/{batch_id}/cancel", "Cancel a message batch", MessageBatch,
          scope="batches:write", action="batches:write", **Anthropic)  # fmt: skip
def cancel_message_batch(batch_id: str, caller: Caller, engine: Engine, request: Request) -> Any:
    return engine.anthropic.cancel(batch_id, actor=caller, workspace=caller.workspace, base_url=base_url(request))


@endpoint("GET", "/v1/messages/batches/{batch_id}/results", "Download a message batch's results", None,
          scope="batches:read", action="batches:read", response_class=Response,
          responses={200: {"content": {"application/x-jsonl": {"schema": {"type": "string"}}}}},
          **Anthropic)  # fmt: skip
def message_batch_results(batch_id: str, caller: Caller, engine: Engine) -> Any:
    return Response(engine.anthropic.results(batch_id, workspace=caller.workspace), media_type="application/x-jsonl")


@endpoint("DELETE", "/v1/messages/batches/{batch_id}", "Delete a message batch", DeletedMessageBatch,
          scope="batches:write", action="batches:write", **Anthropic)  # fmt: skip
def delete_message_batch(batch_id: str, caller: Caller, engine: Engine) -> Any:
    return engine.anthropic.delete(batch_id, actor=caller, workspace=caller.workspace)
