"""OpenAI's Files + Batch API: a JSONL file of `/v1/chat/completions` requests (purpose `batch`), then a batch.

One model per batch (OpenAI refuses a file that mixes them), so `plan` groups lines by upstream model
and keeps each batch within the model's enqueued-token limit. Where that limit is configured, `submit`
first adds up the input tokens of our batches of the model still in flight (each batch carries its
model and tokens in its metadata) and raises `BatchCapacityError` (retryable) without making
anything when this one would pass the limit: hold the lines and submit them again once some end.
A batch the provider itself finds over the limit (batches made by others, tokens undercounted) fails
validation with `token_limit_exceeded`: `poll` reports it `failed` with a `BatchCapacityError` and
`results` gives every line that error.

Output lines are `{custom_id, response: {status_code, request_id, body}, error}` in the output file
(answered 200s) and the error file (other statuses, and `batch_expired` lines); lines a cancel
stopped appear in neither, so the input file fills in the lines an ended batch did not return.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from batchrouter.core.errors import BatchCapacityError, ProviderError, TerminalError, TransientError
from batchrouter.execution.provider_batches.base import (
    IDEMPOTENCY_KEY,
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
from batchrouter.execution.providers import OpenAIAdapter

ENDPOINT = "/v1/chat/completions"
LOOKUP_PAGES = 5  # pages of 100 recent batches searched for one already made by a submit
CAPACITY_CODES = frozenset({"token_limit_exceeded"})
_STATUSES = frozenset(status.value for status in BatchStatus)
_ENDED = frozenset(status.value for status in BatchStatus if status.ended)
# Metadata each batch carries beside IDEMPOTENCY_KEY, so later submits can count the enqueued tokens.
MODEL_KEY, TOKENS_KEY = "batchrouter_model", "batchrouter_tokens"


class OpenAIBatchClient(BatchClient):
    wire: ClassVar[str] = "openai"
    # 50,000 requests and 200 MB per file (read as 10^6 bytes: the smaller reading of "MB").
    default_limits: ClassVar[BatchLimits] = BatchLimits(max_requests=50_000, max_bytes=200_000_000)

    adapter: OpenAIAdapter

    def encode(self, line: BatchLine) -> bytes:
        body = self.adapter.body(line.item, line.upstream)
        return dumps({"custom_id": line.custom_id, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"

    def payload(self, lines: Sequence[BatchLine]) -> bytes:
        return b"".join(self.encode(line) for line in lines)

    def group(self, line: BatchLine) -> str:
        return line.upstream

    def token_limit(self, group: str) -> int | None:
        return self.limits.enqueued_limit(group)

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.adapter.api_key}"} if self.adapter.api_key else {}

    async def _submit(
        self, lines: Sequence[BatchLine], metadata: dict[str, str], completion_window: str, given: bool
    ) -> ProviderBatch:
        data = self.payload(lines)
        if len(data) > self.limits.max_bytes:
            raise too_large(len(data), self.limits.max_bytes)
        key = metadata[IDEMPOTENCY_KEY]
        model, tokens = lines[0].upstream, sum(line.input_tokens for line in lines)
        metadata = {**metadata, MODEL_KEY: model, TOKENS_KEY: str(tokens)}
        if given:  # an earlier submit (another process) may have made it: look before uploading anything
            found = await self.find(key)
            if found is not None:
                return found
        limit = self.limits.enqueued_limit(model)
        if limit is not None:
            enqueued = await self.enqueued(model)
            if enqueued + tokens > limit:
                raise BatchCapacityError(
                    "token_limit_exceeded",
                    f"{model}: {enqueued} input tokens are enqueued in our batches in flight and this batch holds "
                    f"{tokens}; the limit is {limit}. Submit it again once some of those batches have ended.",
                )
        # A repeated upload only leaves an unused file behind; the batch is what must not be made twice.
        upload = await self.json(
            "POST",
            "files",
            data={"purpose": "batch"},
            files={"file": (f"batchrouter-{key}.jsonl", data, "application/jsonl")},
        )
        body = {
            "input_file_id": upload["id"],
            "endpoint": ENDPOINT,
            "completion_window": completion_window,
            "metadata": metadata,
        }

        async def create() -> ProviderBatch:
            response = await self.send("POST", "batches", json=body)
            return self.batch(response.json())

        return await self.idempotent(create, lambda: self.find(key), look_first=False)

    async def recent(self) -> AsyncIterator[dict[str, Any]]:
        """The account's most recent batches, newest first (`LOOKUP_PAGES` pages of 100)."""
        params: dict[str, Any] = {"limit": 100}
        for _ in range(LOOKUP_PAGES):
            page = await self.json("GET", "batches", params=params)
            rows = [row for row in page.get("data") or [] if isinstance(row, dict)]
            for row in rows:
                yield row
            if not page.get("has_more") or not rows:
                return
            params["after"] = rows[-1]["id"]

    async def find(self, key: str) -> ProviderBatch | None:
        """The recent batch whose metadata carries `key`, if one exists."""
        async for row in self.recent():
            if obj(row.get("metadata")).get(IDEMPOTENCY_KEY) == key:
                return self.batch(row)
        return None

    async def enqueued(self, model: str) -> int:
        """Input tokens of `model` in our batches not ended yet, as their metadata declares them.

        What counts against OpenAI's enqueued-token limit; batches made by others on the account are not
        seen here, and the provider still fails a batch over the limit (`poll` then says so).
        """
        total = 0
        async for row in self.recent():
            meta = obj(row.get("metadata"))
            if meta.get(MODEL_KEY) == model and row.get("status") not in _ENDED and meta.get(TOKENS_KEY, "").isdigit():
                total += int(meta[TOKENS_KEY])
        return total

    async def poll(self, provider_batch_id: str) -> ProviderBatch:
        return self.batch(await self.json("GET", f"batches/{provider_batch_id}"))

    async def cancel(self, provider_batch_id: str) -> ProviderBatch:
        try:
            return self.batch(await self.json("POST", f"batches/{provider_batch_id}/cancel", final=frozenset({409})))
        except ProviderError as exc:
            if exc.status != 409:  # 409: it has ended already
                raise
        return await self.poll(provider_batch_id)

    async def results(self, batch: ProviderBatch) -> AsyncIterator[LineResult]:
        if not batch.ended:
            raise not_ended(batch)
        seen: set[str] = set()
        for field in ("output_file_id", "error_file_id"):
            file_id = batch.raw.get(field)
            if isinstance(file_id, str):
                async for row in self.jsonl(f"files/{file_id}/content"):
                    result = self.line(row)
                    if result.custom_id not in seen:
                        seen.add(result.custom_id)
                        yield result
        if batch.status is BatchStatus.FAILED or len(seen) < batch.total:
            async for row in self.jsonl(f"files/{batch.raw['input_file_id']}/content"):
                custom_id = str(row.get("custom_id"))
                if custom_id not in seen:
                    seen.add(custom_id)
                    yield self.unanswered(custom_id, batch)

    def line(self, row: Mapping[str, Any]) -> LineResult:
        """One output or error file line."""
        custom_id = str(row.get("custom_id"))
        response = row.get("response")
        if isinstance(response, dict):
            request_id = response.get("request_id")
            headers = {"x-request-id": request_id} if isinstance(request_id, str) else {}
            body = json.dumps(response.get("body"), ensure_ascii=False).encode()
            status = int(response.get("status_code") or 0)
            return self.answered(custom_id, status, headers, body, headers.get("x-request-id"))
        error = obj(row.get("error"))
        code = str(error.get("code") or "batch_line_error")
        message = str(error.get("message") or "the provider returned no response for this line")
        if code == "batch_expired":
            return LineResult(custom_id, None, TransientError(code, message), "expired", None)
        return LineResult(custom_id, None, TerminalError(code, message), "errored", None)

    def batch(self, raw: dict[str, Any]) -> ProviderBatch:
        """The provider's batch object as a `ProviderBatch`."""
        counts = raw.get("request_counts") or {}
        # A status this client does not know yet reads as still running: poll on, never act on it.
        known = raw.get("status") in _STATUSES
        status = BatchStatus(raw["status"]) if known else BatchStatus.IN_PROGRESS
        ended = next(
            (raw[k] for k in ("completed_at", "failed_at", "expired_at", "cancelled_at") if raw.get(k) is not None),
            None,
        )
        return ProviderBatch(
            provider=self.name,
            provider_batch_id=str(raw["id"]),
            status=status,
            provider_status=str(raw["status"]),
            total=int(counts.get("total") or 0),
            succeeded=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            created_at=float(raw.get("created_at") or 0),
            ended_at=float(ended) if ended is not None else None,
            raw=raw,
            error=_failure(raw) if status is BatchStatus.FAILED else None,
        )


def _failure(raw: Mapping[str, Any]) -> ProviderError:
    """Why a batch failed: the enqueued-token limit (retry later) or a file the provider refused."""
    errors = [e for e in ((raw.get("errors") or {}).get("data") or []) if isinstance(e, dict)]
    if not errors:
        return TerminalError("batch_failed", f"batch {raw.get('id')} failed without saying why")
    codes = {str(e.get("code")) for e in errors}
    message = "; ".join(
        (f"line {e['line']}: " if e.get("line") else "") + str(e.get("message") or e.get("code")) for e in errors[:5]
    )
    if codes & CAPACITY_CODES:
        return BatchCapacityError("token_limit_exceeded", message)
    first = str(errors[0].get("code") or "batch_failed")
    return TerminalError(first, message + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""))
