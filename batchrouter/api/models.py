"""The API's request bodies, and the responses that are not an engine result as it is.

Most responses are the engine's typed results (`QuoteSummary`, `CreditBalance`, `IssuedKey`, ...);
here are the lists that wrap them, and a batch's view with its nested parts typed in full.

Money is integer micro-dollars (`*_usd_micros`); times are ISO 8601 strings. A field a batch does not
have yet (a batch not yet run has no `receipts`) is null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batchrouter.access.accounts import SCOPES
from batchrouter.access.keys import KeyInfo
from batchrouter.access.members import Member
from batchrouter.batches.results import QuoteSummary
from batchrouter.core.batch_info import check_run_tag
from batchrouter.core.errors import BatchError
from batchrouter.dropin.openai import OpenAIBatch
from batchrouter.money.credits import JournalEntry
from batchrouter.output.files import FileObject
from batchrouter.output.webhooks import WebhookEndpoint


class Body(BaseModel):
    pass


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- requests --------------------------------------------------------------------------------------
class ExpiresAfter(Body):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 24 * 3600)


class CreateBatch(Body):
    """Either BatchRouter's `{quote_id}` or OpenAI's `{input_file_id, endpoint, completion_window, ...}`."""

    quote_id: str | None = Field(
        default=None, pattern=r"^q_[0-9a-f]{24}$", description="the id of a quote made by POST /v1/quotes"
    )
    input_file_id: str | None = Field(
        default=None, max_length=64, description="OpenAI's Batch API: a file uploaded with purpose 'batch'"
    )
    endpoint: str | None = Field(default=None, max_length=64, description="/v1/chat/completions or /v1/responses")
    completion_window: str | None = Field(
        default=None, max_length=16, description="the batch's deadline: 24h (or any duration, e.g. 4h)"
    )
    metadata: dict[str, str] | None = Field(
        default=None, max_length=16, description="kept as given; br_deadline and br_run_tag are options"
    )
    output_expires_after: ExpiresAfter | None = None
    run_tag: str | None = Field(
        default=None,
        max_length=64,
        description="run the same manifest again on purpose: a new tag makes a new batch (the same tag, the same one)",
    )

    @field_validator("run_tag")
    @classmethod
    def _run_tag(cls, value: str | None) -> str | None:
        try:
            return check_run_tag(value)
        except BatchError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, text in (value or {}).items():
            if len(key) > 64 or len(text) > 512:
                raise ValueError("keys are at most 64 characters and values at most 512 (as at OpenAI)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> CreateBatch:
        if (self.quote_id is None) == (self.input_file_id is None):
            raise ValueError("give quote_id (a BatchRouter quote) or input_file_id (OpenAI's Batch API), not both")
        if self.input_file_id is not None and (self.endpoint is None or self.completion_window is None):
            raise ValueError("input_file_id needs endpoint and completion_window too")
        return self


class Checkout(Body):
    pack: str = Field(min_length=1, max_length=64)


class SetMember(Body):
    role: str = Field(pattern="^(owner|admin|member|viewer)$")


class CreateKey(Body):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES))
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class RotateKey(Body):
    grace_hours: float = Field(default=24, ge=0, le=24 * 30)


class AddWebhook(Body):
    url: str = Field(min_length=8, max_length=2048, description="an https:// (or, in development, http://) URL")


# -- quotes ----------------------------------------------------------------------------------------
class StoredQuote(QuoteSummary):
    """A quote kept by POST /v1/quotes, with the file name it was sent as."""

    filename: str


# -- batches ---------------------------------------------------------------------------------------
class BatchQuote(Out):
    quote_id: str
    items: int
    accepted: int
    rejected: int
    reserve_usd_micros: int
    expected_usd_micros: int
    catalog_version: str


class RouteCost(Out):
    route: str
    items: int
    cost_usd_micros: int


class HoldView(Out):
    hold: str
    status: str
    reserved_usd_micros: int
    captured_usd_micros: int


class Batch(OpenAIBatch):
    """A batch: OpenAI's `batch` object (`status` is OpenAI's), and BatchRouter's view of it (`state` is ours)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch_id: str
    workspace: str
    source: str
    submitted_at: str
    state: str = Field(description="BatchRouter's state (batches.states): reserved, dispatching, partially_failed...")
    updated_at: str | None = None
    message: str | None = None
    quote: BatchQuote | None = None
    items_by_status: dict[str, int] | None = None
    actual_usd_micros: int | None = None
    cost_by_route: list[RouteCost] | None = None
    outputs: str | None = None
    receipts: str | None = None
    holds: list[HoldView] = []
    duration_s: float | None = None
    created: bool = Field(default=False, description="True when this call made the batch (or its reservation)")


class Batches(Out):
    """OpenAI's list envelope; `batches` is the same page, for BatchRouter clients of the earlier shape."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool
    batches: list[Batch]


# -- files -------------------------------------------------------------------------------------------
class Files(Out):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


# -- lists of the engine's results ----------------------------------------------------------------
class History(Out):
    entries: list[JournalEntry]


class Members(Out):
    members: list[Member]


class Keys(Out):
    keys: list[KeyInfo]


class Webhooks(Out):
    webhooks: list[WebhookEndpoint]


class Health(Out):
    ok: bool


class CreateMessageBatch(Body):
    """Anthropic's Message Batch create body; each request is checked by `engine.anthropic` (naming its index)."""

    # Any items: the engine checks each one, naming requests[i] and the field at fault.
    requests: list[Any] = Field(min_length=1, max_length=100_000,
                                description="[{custom_id, params: {Messages API params}}]")  # fmt: skip
