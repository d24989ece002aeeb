"""Anthropic's Message Batches: one `POST /v1/messages/batches` of `{custom_id, params}` requests.

`processing_status` is `in_progress`, `canceling` or `ended`; an ended batch is reported as
`cancelled` when a cancel was asked, `expired` when the window closed on some of its lines, else
`completed`. `request_counts` move only when the batch ends. Results (`.../results`, JSONL) are
`succeeded` (a Messages answer, parsed by the online adapter), `errored` (the provider's error
object), `canceled` and `expired`.

Batches carry no metadata, so a submit retried after a lost answer recognises its batch by what a
listing shows: created after the newest batch listed before the submit began, of the same number of
requests, and not returned by this client already (the oldest such). BatchRouter runs one batch
job per provider at a time, which is what makes that match unambiguous; across processes a submit
cannot find an earlier one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from batchrouter.core.errors import ProviderError, TerminalError
from batchrouter.execution.provider_batches.base import (
    BatchClient,
    BatchLimits,
    BatchLine,
    BatchStatus,
    LineResult,
    ProviderBatch,
    dumps,
    not_ended,
    obj,
    too_large,
)
from batchrouter.execution.providers.anthropic import API_VERSION, anthropic_body

_OPEN, _CLOSE = b'{"requests":[', b"]}"
# The HTTP status each Anthropic error type is answered with online, so `parse` classifies it alike.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _time(value: Any) -> float | None:
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None


class AnthropicBatchClient(BatchClient):
    wire: ClassVar[str] = "anthropic"
    # 100,000 requests and 256 MB of request body (read as 10^6 bytes: the smaller reading of "MB").
    default_limits: ClassVar[BatchLimits] = BatchLimits(max_requests=100_000, max_bytes=256_000_000)
    envelope_bytes: ClassVar[int] = len(_OPEN) + len(_CLOSE)
    separator_bytes: ClassVar[int] = 1  # the comma

    def encode(self, line: BatchLine) -> bytes:
        return dumps({"custom_id": line.custom_id, "params": anthropic_body(line.item, line.upstream)})

    def payload(self, lines: Sequence[BatchLine]) -> bytes:
        return _OPEN + b",".join(self.encode(line) for line in lines) + _CLOSE

    def headers(self) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if self.adapter.api_key:
            headers["x-api-key"] = self.adapter.api_key
        return headers

    async def _submit(
        self, lines: Sequence[BatchLine], metadata: dict[str, str], completion_window: str, given: bool
    ) -> ProviderBatch:
        if completion_window != "24h":
            raise TerminalError("unsupported_completion_window", "Anthropic message batches have a 24h window only")
        body = self.payload(lines)
        if len(body) > self.limits.max_bytes:
            raise too_large(len(body), self.limits.max_bytes)
        newest = await self.json("GET", "messages/batches", params={"limit": 1})
        rows = [row for row in newest.get("data") or [] if isinstance(row, dict)]
        mark = (str(rows[0].get("id")), _time(rows[0].get("created_at")) or 0.0) if rows else None
        headers = {"content-type": "application/json"}

        async def create() -> ProviderBatch:
            response = await self.send("POST", "messages/batches", content=body, headers=headers)
            return self.batch(response.json())

        # No label to look for before the first attempt: only a retry may find a batch of ours.
        return await self.idempotent(create, lambda: self.find(mark, len(lines)), look_first=False)

    async def find(self, mark: tuple[str, float] | None, size: int) -> ProviderBatch | None:
        """The oldest batch of `size` requests made since `mark` (the newest before the submit), not yet claimed.

        Read from the newest 100, by creation time rather than a cursor (the mark may have been deleted).
        """
        page = await self.json("GET", "messages/batches", params={"limit": 100})
        since: list[dict[str, Any]] = []
        for row in (row for row in page.get("data") or [] if isinstance(row, dict)):  # newest first
            if mark is not None and (row.get("id") == mark[0] or (_time(row.get("created_at")) or 0.0) < mark[1]):
                break
            since.append(row)
        for row in reversed(since):  # oldest first
            counts = obj(row.get("request_counts"))
            if row.get("id") not in self._claimed and sum(int(v or 0) for v in counts.values()) == size:
                return self.batch(row)
        return None

    async def poll(self, provider_batch_id: str) -> ProviderBatch:
        return self.batch(await self.json("GET", f"messages/batches/{provider_batch_id}"))

    async def cancel(self, provider_batch_id: str) -> ProviderBatch:
        try:
            return self.batch(
                await self.json("POST", f"messages/batches/{provider_batch_id}/cancel", final=frozenset({400, 409}))
            )
        except ProviderError as exc:
            if exc.status not in (400, 409):
                raise
            batch = await self.poll(provider_batch_id)  # refused because it has ended: that is the answer
            if not batch.ended:
                raise
            return batch

    async def results(self, batch: ProviderBatch) -> AsyncIterator[LineResult]:
        if not batch.ended:
            raise not_ended(batch)
        # The documented path rather than `results_url`, so the API key only ever goes to the base URL.
        async for row in self.jsonl(f"messages/batches/{batch.provider_batch_id}/results"):
            yield self.line(row, batch)

    def line(self, row: Mapping[str, Any], batch: ProviderBatch) -> LineResult:
        custom_id = str(row.get("custom_id"))
        result = obj(row.get("result"))
        kind = result.get("type")
        if kind == "succeeded":
            message = result.get("message")
            return self.answered(custom_id, 200, {}, json.dumps(message, ensure_ascii=False).encode(), None)
        if kind == "errored":
            error = obj(result.get("error"))
            inner = obj(error.get("error"))
            request_id = error.get("request_id") if isinstance(error.get("request_id"), str) else None
            status = ERROR_STATUS.get(str(inner.get("type")), 400)
            headers = {"request-id": request_id} if request_id else {}
            return self.answered(custom_id, status, headers, json.dumps(error).encode(), request_id)
        return self.unanswered(custom_id, batch, why="expired" if kind == "expired" else "cancelled")

    def batch(self, raw: dict[str, Any]) -> ProviderBatch:
        """The provider's message batch as a `ProviderBatch`."""
        counts = {k: int(v or 0) for k, v in (raw.get("request_counts") or {}).items()}
        provider_status = str(raw["processing_status"])
        if provider_status == "canceling":
            status = BatchStatus.CANCELLING
        elif provider_status != "ended":
            status = BatchStatus.IN_PROGRESS
        elif raw.get("cancel_initiated_at"):
            status = BatchStatus.CANCELLED
        elif counts.get("expired"):
            status = BatchStatus.EXPIRED
        else:
            status = BatchStatus.COMPLETED
        return ProviderBatch(
            provider=self.name,
            provider_batch_id=str(raw["id"]),
            status=status,
            provider_status=provider_status,
            total=sum(counts.values()),
            succeeded=counts.get("succeeded", 0),
            failed=counts.get("errored", 0) + counts.get("expired", 0),
            created_at=_time(raw.get("created_at")) or 0.0,
            ended_at=_time(raw.get("ended_at")),
            raw=raw,
        )
