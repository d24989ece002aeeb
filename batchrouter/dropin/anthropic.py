"""Anthropic's Message Batches API over BatchRouter's batches (`engine.anthropic`).

Create, retrieve, list, cancel, results and delete. A batch made here is an ordinary BatchRouter
batch (the same quote, reservation, routing, lanes and receipts); its requests are written as
BatchRouter's JSONL manifest (`anthropic_lines.manifest`) and any batch is described as Anthropic's
`message_batch` object, BatchRouter's own fields beside (the SDK's models keep extra keys).

Rules, each written once here:
- The deadline is Anthropic's window, 24 hours (each route takes the cheapest lane that makes it).
  Anthropic's create body has no metadata, so BatchRouter's options are headers (read by the API):
  `x-batchrouter-deadline` (a duration such as "4h" instead, or "asap": every item online at once)
  and `x-batchrouter-run-tag` (run the same requests again on purpose: a new tag, a new batch).
- Creating is idempotent: the same requests (and run tag) in a workspace are one batch (its id is
  the digest of their manifest), so a create the SDK retries makes neither a second batch nor a
  second reservation. Short credit and a quote above the auto-approval limit refuse the create as
  the OpenAI face does (`InsufficientCredits` saying how much is missing, `AwaitingApproval`).
- `processing_status`: `ended` once the batch is final, `canceling` once a cancel is asked and
  until it is done, else `in_progress`. Requests never answered count as `canceled` in a cancelled
  batch, `expired` in an expired one, `errored` otherwise.
- Deleting is allowed once the batch has ended; the batch then no longer exists for this API
  (retrieve, list, results, cancel answer not found). Its receipts and ledger entries are kept.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from batchrouter.access.actors import Actor
from batchrouter.batches.results import BatchView
from batchrouter.batches.states import BatchState
from batchrouter.core.durations import parse_deadline
from batchrouter.core.errors import AwaitingApproval, InvalidRequest, NotFound
from batchrouter.core.paging import page
from batchrouter.dropin import anthropic_lines

if TYPE_CHECKING:
    from batchrouter.core.batch_info import BatchInfo
    from batchrouter.engine import BatchRouter

SIDECAR = "anthropic.json"
DELETED = "anthropic-deleted.json"
WINDOW_S = 24 * 3600
ProcessingStatus = Literal["in_progress", "canceling", "ended"]


class RequestCounts(BaseModel):
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatch(BaseModel):
    """A batch as Anthropic's SDK types it (`anthropic.types.messages.MessageBatch`); BatchRouter's fields are extra."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: ProcessingStatus
    request_counts: RequestCounts
    created_at: str
    expires_at: str
    ended_at: str | None = None
    cancel_initiated_at: str | None = None
    archived_at: str | None = None
    results_url: str | None = None


class MessageBatchPage(BaseModel):
    data: builtins.list[MessageBatch]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedMessageBatch(BaseModel):
    id: str
    type: Literal["message_batch_deleted"] = "message_batch_deleted"


def results_path(batch_id: str) -> str:
    return f"/v1/messages/batches/{batch_id}/results"


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _at(iso: str | None) -> str | None:
    return _rfc3339(datetime.fromisoformat(iso)) if iso else None


def deadline_option(value: str | None) -> float | None:
    """`x-batchrouter-deadline`'s seconds (`ASAP` for "asap"); Anthropic's 24 hours without it."""
    if value is None or not value.strip():
        return float(WINDOW_S)
    return parse_deadline(value.strip().lower(), field="x-batchrouter-deadline")


class AnthropicBatches:
    def __init__(self, engine: BatchRouter) -> None:
        self._engine = engine

    def create(
        self, requests: builtins.list[Any], *, workspace: str, actor: Actor, deadline: str | None = None,
        run_tag: str | None = None, base_url: str = "",
    ) -> MessageBatch:  # fmt: skip
        """Make (or find again) the batch of these requests: quote, route, reserve.

        Raises:
            InvalidRequest: a request is malformed (named by index and custom_id), or `deadline` is no duration.
            InsufficientCredits, AwaitingApproval: the batch waits (see the module docstring).
        """
        engine = self._engine
        data = anthropic_lines.manifest(requests)
        seconds = deadline_option(deadline)
        view = engine.batches.create(data, filename="message_batch.jsonl", workspace=workspace, actor=actor,
                                     run_tag=run_tag, deadline=seconds, approve=False)  # fmt: skip
        info = engine.batches.info(view.batch_id)
        if not engine.storage.exists(*info.folder(SIDECAR)):
            engine.storage.write_json({"deadline": deadline, "requests": len(requests)}, *info.folder(SIDECAR))
        if self._deleted(view.batch_id):
            engine.storage.write_json({"deleted": False}, *info.folder(DELETED))  # made again on purpose: it exists
        if view.state == BatchState.AWAITING_APPROVAL:
            raise AwaitingApproval(f"batch {view.batch_id} was made but waits: {view.message}; then create it again")
        return self.describe(view, created=view.created, base_url=base_url)

    def _view(self, batch_id: str, *, workspace: str) -> BatchView:
        view = self._engine.batches.status(batch_id, workspace=workspace)
        if self._deleted(batch_id):
            raise NotFound(f"no message batch {batch_id!r} in workspace {workspace}: it was deleted")
        return view

    def _deleted(self, batch_id: str) -> bool:
        return self._deleted_record(self._engine.batches.info(batch_id))

    def _deleted_record(self, info: BatchInfo) -> bool:
        path = info.folder(DELETED)
        return self._engine.storage.exists(*path) and bool(self._engine.storage.read_json(*path).get("deleted"))

    def retrieve(self, batch_id: str, *, workspace: str, base_url: str = "") -> MessageBatch:
        return self.describe(self._view(batch_id, workspace=workspace), base_url=base_url)

    def list(
        self, workspace: str, *, after_id: str | None = None, before_id: str | None = None, limit: int = 20,
        base_url: str = "",
    ) -> MessageBatchPage:  # fmt: skip
        """The workspace's batches newest first: `limit` after `after_id`, or just before `before_id`."""
        if after_id and before_id:
            raise InvalidRequest("after_id and before_id: give one of them", param="after_id")
        # Paged on the batches' records (and their deleted marks); only the page's batches are described.
        batches = self._engine.batches
        records = [i for i in reversed(batches.records(workspace)) if not self._deleted_record(i)]
        chosen = page(records, key=lambda i: i.batch_id, after=after_id, before=before_id, limit=limit,
                      after_name="after_id")  # fmt: skip
        data = [self.describe(batches.status(i.batch_id), base_url=base_url) for i in chosen.items]
        return MessageBatchPage(data=data, has_more=chosen.has_more, first_id=data[0].id if data else None,
                                last_id=data[-1].id if data else None)  # fmt: skip

    def cancel(self, batch_id: str, *, actor: Actor, workspace: str, base_url: str = "") -> MessageBatch:
        self._view(batch_id, workspace=workspace)
        return self.describe(self._engine.batches.cancel(batch_id, actor=actor), base_url=base_url)

    def results(self, batch_id: str, *, workspace: str) -> bytes:
        """The results JSONL (written once per reservation round, then read back).

        Raises:
            InvalidRequest: the batch has not ended yet.
        """
        engine = self._engine
        view = self._view(batch_id, workspace=workspace)
        if _processing(view, cancel_asked=False) != "ended" or not view.receipts:
            raise InvalidRequest(f"batch {batch_id} has not ended: its results are ready once processing_status is "
                                 "'ended'; poll the batch until then", param="message_batch_id")  # fmt: skip
        info = engine.batches.info(batch_id)
        path = info.folder(f"anthropic-results-{len(view.holds)}.jsonl")
        if not engine.storage.exists(*path):
            engine.storage.write_bytes(anthropic_lines.build(engine.storage, info, ended=str(view.state)), *path)
        return engine.storage.read_bytes(*path)

    def delete(self, batch_id: str, *, actor: Actor, workspace: str) -> DeletedMessageBatch:
        """Delete an ended batch from this API (see the module docstring).

        Raises:
            InvalidRequest: the batch has not ended (cancel it first, then delete it once it has).
        """
        engine = self._engine
        view = self._view(batch_id, workspace=workspace)
        if not view.state.final:
            raise InvalidRequest(f"batch {batch_id} is still {_processing(view, cancel_asked=False)}: only an ended "
                                 "batch can be deleted; cancel it and delete it once it has ended",
                                 param="message_batch_id")  # fmt: skip
        info = engine.batches.info(batch_id)
        engine.storage.write_json(
            {"deleted": True, "by": actor.actor, "at": datetime.now(UTC).isoformat()}, *info.folder(DELETED)
        )
        return DeletedMessageBatch(id=batch_id)

    # -- describing a batch -----------------------------------------------------------------------
    def describe(self, view: BatchView, *, created: bool = False, base_url: str = "") -> MessageBatch:
        """The batch as Anthropic's `message_batch` object, with BatchRouter's view as extra keys."""
        storage = self._engine.storage
        info = self._engine.batches.info(view.batch_id)
        cancel_path = info.folder("cancel.json")
        cancel_asked = storage.exists(*cancel_path)
        status = _processing(view, cancel_asked=cancel_asked)
        created_at = datetime.fromisoformat(view.submitted_at)
        quote = storage.read_json(*info.folder("quote.json")) if storage.exists(*info.folder("quote.json")) else None
        fields: dict[str, Any] = {
            "id": view.batch_id, "processing_status": status, "request_counts": _counts(view, quote, status),
            "created_at": _rfc3339(created_at), "expires_at": _rfc3339(created_at + timedelta(seconds=WINDOW_S)),
        }  # fmt: skip
        if cancel_asked:
            fields["cancel_initiated_at"] = _rfc3339(datetime.fromtimestamp(storage.read_json(*cancel_path)["at"], UTC))
        if status == "ended":
            fields["ended_at"] = _at(view.updated_at)
            if view.receipts:
                fields["results_url"] = base_url.rstrip("/") + results_path(view.batch_id)
        extra = view.to_json() | {"created": created or view.created}
        return MessageBatch.model_validate({**extra, **fields})


def _processing(view: BatchView, *, cancel_asked: bool) -> ProcessingStatus:
    if view.state.final:
        return "ended"
    return "canceling" if cancel_asked else "in_progress"


def _counts(view: BatchView, quote: dict[str, Any] | None, status: str) -> RequestCounts:
    by = view.items_by_status or {}
    total = int(quote["items"]) if quote else sum(by.values())
    succeeded = int(by.get("succeeded", 0))
    errored = int(by.get("failed", 0)) + int(by.get("rejected", 0))
    unanswered = max(0, total - succeeded - errored)
    if status != "ended":
        return RequestCounts(processing=unanswered, succeeded=succeeded, errored=errored, canceled=0, expired=0)
    canceled = unanswered if view.state == BatchState.CANCELLED else 0
    expired = unanswered if view.state == BatchState.EXPIRED else 0
    return RequestCounts(processing=0, succeeded=succeeded, errored=errored + unanswered - canceled - expired,
                         canceled=canceled, expired=expired)  # fmt: skip
