"""OpenAI's Batch API over BatchRouter's batches (`engine.openai`): create, retrieve, list, cancel.

A batch made here is an ordinary BatchRouter batch (the same quote, reservation, routing, lanes and
receipts); this service only reads its input from a file, keeps the OpenAI fields it was made with
(`batches/<id>/openai.json`) and describes any batch as OpenAI's `batch` object, BatchRouter's own
fields beside OpenAI's (the SDK's models keep extra keys).

Rules, each written once here:
- `completion_window` is the batch's deadline (each route takes the cheapest lane that makes it);
  `metadata` is kept as given, and two keys are BatchRouter options: `br_deadline` (a duration such
  as "4h" used as the deadline instead, or "asap": every item online at once) and `br_run_tag` (run
  the same input again on purpose: a new tag makes a new batch).
- Creating a batch is idempotent: the same input bytes (and run tag) in a workspace are one batch
  (its id is their digest), so a create the SDK retries after a timeout finds the batch and its
  reservation and makes neither again. The OpenAI fields of the first create are kept.
- Creating quotes the batch and reserves the quote. It is not the approval of a quote above the
  workspace's auto-approval limit (nobody saw that quote): such a batch waits (`awaiting_approval`,
  shown as `validating`) and the create is refused with `awaiting_approval`; short credit is refused
  with `insufficient_credits`, saying how much is missing. Creating again once approved (`batchrouter
  approve`) or topped up goes on.
- Status: BatchRouter's state mapped onto OpenAI's (`STATUS`); a batch whose cancel is asked but not
  yet done is `cancelling`. Once a batch is final its output and error files are written (once per
  reservation round) and named by `output_file_id` / `error_file_id` (null when there are no such lines).
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from batchrouter.access.actors import Actor
from batchrouter.batches.results import BatchView
from batchrouter.batches.states import BatchState
from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.durations import parse_deadline, parse_duration
from batchrouter.core.errors import AwaitingApproval, InvalidRequest
from batchrouter.core.paging import page
from batchrouter.dropin import openai_lines
from batchrouter.output.files import derived_id

if TYPE_CHECKING:
    from batchrouter.engine import BatchRouter

SIDECAR = "openai.json"
ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
METADATA_DEADLINE, METADATA_RUN_TAG = "br_deadline", "br_run_tag"
OpenAIStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                       "cancelled"]  # fmt: skip
S = BatchState
STATUS: dict[BatchState, OpenAIStatus] = {
    S.SUBMITTED: "validating", S.QUOTED: "validating", S.AWAITING_APPROVAL: "validating",
    S.INSUFFICIENT_CREDITS: "validating", S.UNUSABLE_MANIFEST: "failed", S.RESERVED: "in_progress",
    S.DISPATCHING: "in_progress", S.WAITING_ON_PROVIDER: "in_progress", S.COMPLETED: "completed",
    S.PARTIALLY_FAILED: "completed", S.FAILED: "completed", S.EXPIRED: "expired", S.CANCELLED: "cancelled",
}  # fmt: skip  # FAILED without receipts (its run died before any answer) is "failed": see `_status`
_ENDED_AT = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at", "cancelled": "cancelled_at"}
MAX_ERRORS = 1000  # lines listed in `errors.data`; the error file has them all


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchErrorLine(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: str = "list"
    data: list[BatchErrorLine]


class TokenDetails(BaseModel):
    cached_tokens: int = 0


class OutputDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: TokenDetails
    output_tokens: int
    output_tokens_details: OutputDetails
    total_tokens: int


class OpenAIBatch(BaseModel):
    """A batch as OpenAI's SDK types it (`openai.types.Batch`); BatchRouter's fields are extra keys."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: OpenAIStatus
    created_at: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    expires_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    request_counts: RequestCounts | None = None
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None


class OpenAIBatchPage(BaseModel):
    data: builtins.list[OpenAIBatch]
    first_id: str | None = Field(description="the id of the first batch of the page")
    last_id: str | None = Field(description="the id of the last batch of the page: `after` for the next one")
    has_more: bool


def _epoch(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else None


def _window(value: str) -> float:
    return parse_duration(value, field="completion_window")


class OpenAIBatches:
    def __init__(self, engine: BatchRouter) -> None:
        self._engine = engine

    def create(
        self,
        input_file_id: str,
        *,
        workspace: str,
        actor: Actor,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        output_expires_after_s: int | None = None,
    ) -> OpenAIBatch:
        """Make (or find again) the batch of an uploaded input file: quote, route, reserve.

        Raises:
            NotFound: no such file in the workspace.
            InvalidRequest: the file is not a batch input, the endpoint is not one BatchRouter runs, or
                `completion_window` / `br_deadline` is not a duration.
            ManifestError: the file is unusable as a whole (per-line problems are error-file lines).
            InsufficientCredits, AwaitingApproval: the batch waits (see the module docstring).
        """
        engine = self._engine
        found = engine.files.get(input_file_id, workspace=workspace)
        if found.purpose != "batch":
            raise InvalidRequest(f"input_file_id: file {input_file_id} has purpose {found.purpose!r}; upload the "
                                 "batch input with purpose 'batch'", param="input_file_id")  # fmt: skip
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(f"endpoint: {endpoint!r} is not one BatchRouter runs; use {' or '.join(ENDPOINTS)}",
                                 param="endpoint")  # fmt: skip
        metadata = dict(metadata or {})
        deadline: float | None = _window(completion_window)
        if metadata.get(METADATA_DEADLINE):
            wanted = metadata[METADATA_DEADLINE].strip().lower()
            deadline = parse_deadline(wanted, field=f"metadata.{METADATA_DEADLINE}")
        data = engine.files.content(input_file_id, workspace=workspace)
        view = engine.batches.create(data, filename=f"{input_file_id}.jsonl", workspace=workspace, actor=actor,
                                     run_tag=metadata.get(METADATA_RUN_TAG), deadline=deadline,
                                     approve=False)  # fmt: skip
        info = engine.batches.info(view.batch_id)
        if not engine.storage.exists(*info.folder(SIDECAR)):
            side = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": completion_window,
                    "metadata": metadata, "output_expires_after_s": output_expires_after_s}  # fmt: skip
            engine.storage.write_json(side, *info.folder(SIDECAR))
        if view.state == BatchState.AWAITING_APPROVAL:
            raise AwaitingApproval(f"batch {view.batch_id} was made but waits: {view.message}; then create it again")
        return self.describe(view, created=view.created)

    def retrieve(self, batch_id: str, *, workspace: str) -> OpenAIBatch:
        return self.describe(self._engine.batches.status(batch_id, workspace=workspace))

    def list(self, workspace: str, *, after: str | None = None, limit: int = 20) -> OpenAIBatchPage:
        """The workspace's batches newest first, `limit` after the batch `after`."""
        # Paged on the batches' records; only the page's batches are described.
        records = builtins.list(reversed(self._engine.batches.records(workspace)))
        chosen = page(records, key=lambda i: i.batch_id, after=after, limit=limit)
        data = [self.describe(self._engine.batches.status(i.batch_id)) for i in chosen.items]
        return OpenAIBatchPage(data=data, first_id=data[0].id if data else None,
                               last_id=data[-1].id if data else None, has_more=chosen.has_more)  # fmt: skip

    def cancel(self, batch_id: str, *, actor: Actor, workspace: str) -> OpenAIBatch:
        self._engine.batches.info(batch_id, workspace=workspace)
        return self.describe(self._engine.batches.cancel(batch_id, actor=actor))

    # -- describing a batch -----------------------------------------------------------------------
    def describe(self, view: BatchView, *, created: bool = False) -> OpenAIBatch:
        """The batch as OpenAI's `batch` object, with BatchRouter's view as extra keys."""
        engine = self._engine
        storage = engine.storage
        info = engine.batches.info(view.batch_id)
        side: dict[str, Any] = storage.read_json(*info.folder(SIDECAR)) if storage.exists(*info.folder(SIDECAR)) else {}
        quote = storage.read_json(*info.folder("quote.json")) if storage.exists(*info.folder("quote.json")) else None
        receipts = storage.read_parquet(*info.folder("receipts.parquet")) if view.receipts else None
        created_at = _epoch(view.submitted_at) or 0
        cancel_asked = storage.exists(*info.folder("cancel.json"))
        status = _status(view, receipts, cancel_asked=cancel_asked)
        window = side.get("completion_window") or (f"{int(info.deadline_s)}s" if info.deadline_s else "24h")
        fields: dict[str, Any] = {
            "id": view.batch_id, "endpoint": side.get("endpoint", ENDPOINTS[0]),
            "input_file_id": side.get("input_file_id", ""), "completion_window": window, "status": status,
            "created_at": created_at, "expires_at": created_at + int(_window(window)), "metadata": side.get("metadata"),
        }  # fmt: skip
        if cancel_asked:
            fields["cancelling_at"] = int(storage.read_json(*info.folder("cancel.json"))["at"])
        updated = _epoch(view.updated_at)
        if status in _ENDED_AT:
            fields[_ENDED_AT[status]] = updated
        if receipts is not None and receipts.height:
            started = receipts["started_at"].drop_nulls()
            finished = receipts["finished_at"].drop_nulls()
            fields["in_progress_at"] = int(started.min().timestamp()) if started.len() else updated  # type: ignore[union-attr]
            fields["finalizing_at"] = int(finished.max().timestamp()) if finished.len() else updated  # type: ignore[union-attr]
            fields["usage"] = _usage(receipts)
        elif status == "in_progress":
            fields["in_progress_at"] = updated
        fields["request_counts"] = _counts(view, quote, status)
        if quote is not None:
            models = sorted({r["model"] for r in quote.get("by_route", [])})
            fields["model"] = models[0] if len(models) == 1 else None
            fields["errors"] = _errors(quote, view)
        elif view.state == BatchState.UNUSABLE_MANIFEST:
            fields["errors"] = BatchErrors(data=[BatchErrorLine(code="unusable_manifest", message=view.message)])
        if status != "in_progress" and view.state.final and receipts is not None:
            fields |= self._files(info, view, side)
        extra = view.to_json() | {"created": created or view.created}
        return OpenAIBatch.model_validate({**extra, **fields})

    def _files(self, info: BatchInfo, view: BatchView, side: dict[str, Any]) -> dict[str, str | None]:
        """Write the batch's output and error files (once per reservation round); their ids (None: no lines).

        The ids written are kept beside the batch, so a file that expired or was deleted is never
        written again: its id stays on the batch and reading it answers 404, as at OpenAI.
        """
        files, storage = self._engine.files, self._engine.storage
        marker = info.folder(f"openai-files-{len(view.holds)}.json")
        if storage.exists(*marker):
            written: dict[str, str | None] = storage.read_json(*marker)
            return written
        output, error = openai_lines.build(storage, info, ended=str(view.state))
        written = {}
        for kind, data in (("output", output), ("error", error)):
            file_id = derived_id(info.batch_id, kind, str(len(view.holds)))
            if data:
                files.put(data, workspace=info.workspace, file_id=file_id, filename=f"{info.batch_id}_{kind}.jsonl",
                          purpose="batch_output", expires_after_s=side.get("output_expires_after_s"))  # fmt: skip
            written[f"{kind}_file_id"] = file_id if data else None
        storage.write_json(written, *marker)
        return written


def _status(view: BatchView, receipts: pl.DataFrame | None, *, cancel_asked: bool) -> OpenAIStatus:
    if view.state == BatchState.FAILED and receipts is None:
        return "failed"
    if cancel_asked and not view.state.final:
        return "cancelling"
    return STATUS[view.state]


def _counts(view: BatchView, quote: dict[str, Any] | None, status: str) -> RequestCounts:
    by = view.items_by_status or {}
    total = int(quote["items"]) if quote else sum(by.values())
    completed = int(by.get("succeeded", 0))
    failed = int(by.get("failed", 0)) + int(by.get("rejected", 0))
    if status in ("completed", "expired", "cancelled", "failed"):
        failed += int(by.get("pending", 0))
    return RequestCounts(total=total, completed=completed, failed=failed)


def _usage(receipts: pl.DataFrame) -> BatchUsage:
    sums = receipts.select(pl.col("input_tokens", "output_tokens", "cached_tokens").fill_null(0).sum()).row(0)
    inp, out, cached = (int(v or 0) for v in sums)
    return BatchUsage(input_tokens=inp, input_tokens_details=TokenDetails(cached_tokens=cached), output_tokens=out,
                      output_tokens_details=OutputDetails(), total_tokens=inp + out)  # fmt: skip


def _errors(quote: dict[str, Any], view: BatchView) -> BatchErrors | None:
    """Lines refused at intake or by the quote, each naming its line and field (as OpenAI's validation does)."""
    lines = [BatchErrorLine(code=r["code"], line=r["row"], message=f"line {r['row']}: {r['reason']}", param=r["field"])
             for r in quote.get("rejections", [])[:MAX_ERRORS]]  # fmt: skip
    return BatchErrors(data=lines) if lines else None
