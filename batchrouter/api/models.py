"""The API's request and response bodies: what the OpenAPI document describes and responses are checked against.

Money is integer micro-dollars (`*_usd_micros`); times are ISO 8601 strings. A field a batch does not
have yet (a batch not yet run has no `receipts`) is null.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchrouter.access.accounts import SCOPES
from batchrouter.core.batch_info import check_run_tag
from batchrouter.core.errors import BatchError


class Body(BaseModel):
    pass


class Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- requests --------------------------------------------------------------------------------------
class CreateBatch(Body):
    quote_id: str = Field(pattern=r"^q_[0-9a-f]{24}$", description="the id of a quote made by POST /v1/quotes")
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
class RouteQuote(Out):
    route: str
    provider: str
    model: str
    items: int
    input_tokens: int
    max_output_tokens: int
    reserve_usd_micros: int
    expected_usd_micros: int


class Rejection(Out):
    row: int
    item_id: str | None
    field: str | None
    code: str
    reason: str


class Quote(Out):
    """A priced manifest, nothing reserved: `batchrouter quote --json`."""

    quote_id: str
    workspace: str
    catalog_version: str
    source: str
    manifest_sha256: str
    items: int
    accepted: int
    rejected: int
    input_tokens: int
    reserve_usd_micros: int
    expected_usd_micros: int
    by_route: list[RouteQuote]
    rejections: list[Rejection]


class StoredQuote(Quote):
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


class BatchListed(Out):
    batch_id: str
    status: str
    submitted_at: str
    updated_at: str | None = None
    quote: BatchQuote | None = None
    items_by_status: dict[str, int] | None = None
    actual_usd_micros: int | None = None


class Batch(Out):
    """A batch's state: `batchrouter status --json`."""

    batch_id: str
    workspace: str
    source: str
    submitted_at: str
    state: str
    status: str = Field(description="the state's name (the key older clients read)")
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
    batches: list[BatchListed]


class Links(Out):
    batch_id: str
    expires_in_s: int
    links: dict[str, str] = Field(description="artifact name -> a signed URL, for the artifacts that exist")


# -- credits ---------------------------------------------------------------------------------------
class Balance(Out):
    workspace: str
    available_usd_micros: int
    held_usd_micros: int
    spent_usd_micros: int
    credited_usd_micros: int
    balanced: bool


class JournalEntry(Out):
    created_at: str
    op: str
    batch_id: str | None
    amount_usd_micros: int
    memo: str | None
    idempotency_key: str
    entry_id: str


class History(Out):
    entries: list[JournalEntry]


class CheckoutSession(Out):
    session_id: str
    url: str


class StripeReceipt(Out):
    received: bool
    event: str
    type: str
    outcome: str
    session: str | None = None
    workspace: str | None = None
    credited_usd_micros: int | None = None


# -- members, keys, webhooks ----------------------------------------------------------------------
class Member(Out):
    email: str
    role: str
    added_at: str


class Members(Out):
    members: list[Member]


class Key(Out):
    key_id: str
    prefix: str
    workspace: str
    name: str
    scopes: list[str]
    created_by: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class Keys(Out):
    keys: list[Key]


class NewKey(Key):
    key: str = Field(description="the full key: shown this once")
    note: str


class RevokedKey(Key):
    revoked: bool


class Webhook(Out):
    endpoint_id: str
    workspace: str
    url: str
    enabled: bool
    disabled_reason: str | None
    created_at: str
    failures: int


class Webhooks(Out):
    webhooks: list[Webhook]


class NewWebhook(Out):
    endpoint_id: str
    url: str
    secret: str = Field(description="signs every delivery: shown this once")
    note: str


class RemovedWebhook(Out):
    removed: str


class Health(Out):
    ok: bool
