"""What the batches service returns: typed results whose JSON is what `--json` and the API print.

`model_dump(mode="json")` of each is the public JSON (the keys of `batchrouter quote|status|run
--json` and of the API's bodies); fields not listed here are kept as extra keys, so a stage that
records a new detail in a batch's status shows it without a change here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batchrouter.batches.states import BatchState


class _Result(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


class RouteQuote(_Result):
    route: str
    provider: str
    model: str
    items: int
    input_tokens: int
    max_output_tokens: int
    reserve_usd_micros: int
    expected_usd_micros: int


class LaneQuote(_Result):
    """Items of one route on one lane (`pricing.lanes`): the price there, and the saving against online."""

    route: str
    provider: str
    model: str
    lane: str
    items: int
    expected_usd_micros: int
    online_expected_usd_micros: int
    saving_usd_micros: int


class Rejection(_Result):
    row: int
    item_id: str | None
    field: str
    code: str
    reason: str


class QuoteSummary(_Result):
    """A manifest priced item by item: `reserve_usd_micros` is never below what the items will cost."""

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
    expected_usd_micros: int = Field(description="on each item's lane")
    online_expected_usd_micros: int | None = Field(default=None, description="every item online (older quotes: none)")
    deadline_s: float | None = Field(default=None, description="seconds from the start to the deadline; none: ASAP")
    by_route: list[RouteQuote]
    by_lane: list[LaneQuote] = Field(default_factory=list)
    rejections: list[Rejection]


class HoldView(_Result):
    hold: str
    status: str
    reserved_usd_micros: int
    captured_usd_micros: int


class BatchView(_Result):
    """A batch as `batchrouter status` shows it: its state, quote, items by status, holds and files."""

    batch_id: str
    workspace: str
    source: str
    submitted_at: str
    state: BatchState
    status: str = Field(description="the state's name (the key older clients read)")
    updated_at: str | None = None
    message: str | None = None
    quote: dict[str, Any] | None = None
    items_by_status: dict[str, int] | None = None
    actual_usd_micros: int | None = None
    cost_by_route: list[dict[str, Any]] | None = None
    outputs: str | None = None
    receipts: str | None = None
    holds: list[HoldView] = Field(default_factory=list)
    duration_s: float | None = None
    created: bool = Field(default=False, description="True when this call made the batch (or its reservation)")


class Progress(_Result):
    """How far a dispatch is, for a progress display."""

    succeeded: int
    failed: int
    total: int
    cost_usd_micros: int
    elapsed_s: float


class RunSummary(_Result):
    """What a run of a batch did: `batchrouter run --json`."""

    batch_id: str
    workspace: str
    state: BatchState
    status: str
    items: int
    succeeded: int
    failed: int
    rejected: int
    pending: int
    reserve_usd_micros: int
    cost_usd_micros: int
    retries: int
    rate_limited: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    by_route: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    outputs: str
    receipts: str
    settlement: dict[str, Any] | None = None
    webhooks: list[dict[str, Any]] | None = None
