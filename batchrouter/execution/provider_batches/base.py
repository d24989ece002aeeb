"""What every provider batch client does: plan, submit, poll, read the results of, and cancel provider batches.

A provider batch is the provider's own Batch API (OpenAI Files + Batches, Anthropic Message Batches):
a set of requests answered within a completion window at the batch price. Each line is the exact
request the online lane sends (the online adapters build the bodies) and each answered line is
parsed by the same adapter's `parse()`, so a batch line yields the `Completion` an online call would.

Every line of an ended batch comes back from `results()` exactly once as a `LineResult` with either a
completion or an error: errored lines with the provider's error (retryable or not, as online),
expired and cancelled lines (never run) as retryable `TransientError`s, and every line of a failed
batch with the batch's error (`BatchCapacityError` for OpenAI's enqueued-token limit, which passes
once batches in flight end; `TerminalError` for a file the provider refused). A submit that would pass
the enqueued-token limit raises `BatchCapacityError` and makes nothing (OpenAI, where configured).

`submit` is idempotent within a call, and across calls where the provider lets us label a batch: it
may time out after the provider created the batch, so before creating again it looks for the batch it
may already have made (OpenAI: by `metadata[IDEMPOTENCY_KEY]`, also before the first attempt when the
caller gives that key; Anthropic, which has no batch metadata: the oldest batch of the same size
created since the submit began and not already returned by this client).

Errors of the batch API itself are classified as the online adapters classify them: 429 waits for
its Retry-After (up to `max_retry_after_s`, else it is raised); 5xx, timeouts and resets (and 408,
409, 425, as online) are retried with backoff up to `retry_timeout_s`; other 4xx raise a
`TerminalError` with the provider's message. Reads are retried as they are; a create goes through
`idempotent`, which looks for the batch a lost answer may have made before trying again.
"""

from __future__ import annotations

import json
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx

from batchrouter.core import retry, wirejson
from batchrouter.core.config import ProviderConfig, SimulatorConfig
from batchrouter.core.errors import ConfigError, ProviderError, RateLimitedError, TerminalError, TransientError
from batchrouter.execution.providers import Completion, ProviderAdapter, RequestItem
from batchrouter.execution.providers.base import classify

if TYPE_CHECKING:
    from types import TracebackType

    import stamina

IDEMPOTENCY_KEY = "batchrouter_key"  # the metadata key that names a submit (OpenAI batch metadata)
CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # valid for both providers
Outcome = Literal["succeeded", "errored", "expired", "cancelled"]


class BatchStatus(StrEnum):
    """Where a provider batch is, in OpenAI's words (Anthropic's `processing_status` is mapped onto them)."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED, BatchStatus.FAILED})


@dataclass(frozen=True)
class BatchLine:
    """One item in a provider batch."""

    custom_id: str  # unique within the provider batch; `CUSTOM_ID` (both providers accept it)
    item: RequestItem
    upstream: str
    input_tokens: int  # counted at quote time; for the enqueued-token capacity


@dataclass(frozen=True)
class BatchLimits:
    """What one provider batch may hold, and the input tokens a model may have enqueued across batches."""

    max_requests: int
    max_bytes: int  # the bytes sent: OpenAI's JSONL file, Anthropic's request body
    enqueued_tokens: Mapping[str, int] = field(default_factory=dict)  # per upstream model
    enqueued_tokens_default: int | None = None  # models not in `enqueued_tokens` (None: unlimited)

    def enqueued_limit(self, model: str) -> int | None:
        return self.enqueued_tokens.get(model, self.enqueued_tokens_default)


@dataclass(frozen=True)
class ProviderBatch:
    """What the provider says about one batch, now."""

    provider: str
    provider_batch_id: str
    status: BatchStatus
    provider_status: str
    total: int
    succeeded: int
    failed: int  # errored and expired lines (cancelled ones count in neither, as OpenAI counts them)
    created_at: float  # the provider's own unix timestamps (its clock)
    ended_at: float | None
    raw: dict[str, Any]  # the provider's object as JSON
    error: ProviderError | None = None  # why a failed batch failed (BatchCapacityError: retry later)

    @property
    def ended(self) -> bool:
        return self.status.ended


@dataclass(frozen=True)
class LineResult:
    """One line of an ended batch: exactly one of `completion` and `error` is set."""

    custom_id: str
    completion: Completion | None  # parsed by the online adapter's parse() from the line's body
    error: ProviderError | None
    outcome: Outcome
    request_id: str | None


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: provider JSON read without trusting its shape."""
    return value if isinstance(value, dict) else {}


def not_ended(batch: ProviderBatch) -> TerminalError:
    return TerminalError("batch_not_ended", f"batch {batch.provider_batch_id} is {batch.status}: poll until it ends")


def too_large(size: int, limit: int) -> TerminalError:
    return TerminalError("batch_too_large", f"{size} bytes to send; a batch takes {limit}: split with plan()")


def dumps(value: Any) -> bytes:
    """JSON as sent: compact UTF-8, so `plan` measures exactly the bytes `submit` sends."""
    return wirejson.dumps(value)


class BatchClient(ABC):
    """Base of the batch clients, one per wire; owns an `httpx.AsyncClient` (close with `aclose`)."""

    wire: ClassVar[str]
    default_limits: ClassVar[BatchLimits]
    # Bytes around the lines of one batch (before the first, after the last) and between two of them.
    envelope_bytes: ClassVar[int] = 0
    separator_bytes: ClassVar[int] = 0

    def __init__(
        self,
        adapter: ProviderAdapter,
        *,
        limits: BatchLimits | None = None,
        timeout_s: float = 120.0,
        retry_timeout_s: float = 300.0,
        retry_first_s: float = 0.5,
        max_retry_after_s: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self.limits = limits or self.default_limits
        self.timeout_s = timeout_s
        self.retry_timeout_s = retry_timeout_s
        self.retry_first_s = retry_first_s
        self.max_retry_after_s = max_retry_after_s
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._claimed: set[str] = set()  # provider batch ids this client's submits returned

    # -- the interface ---------------------------------------------------------------------------------

    def plan(self, lines: Sequence[BatchLine]) -> list[list[BatchLine]]:
        """`lines` split into batches that each fit `limits` (requests, bytes, a model's enqueued tokens).

        Lines keep their order within a group (OpenAI: one group per model, a batch holds one model).
        A single line over `max_bytes` or the token limit goes alone, for the provider to refuse.
        """
        groups: dict[str, list[BatchLine]] = {}
        for line in lines:
            groups.setdefault(self.group(line), []).append(line)
        chunks: list[list[BatchLine]] = []
        for key, group in groups.items():
            token_limit = self.token_limit(key)
            chunk: list[BatchLine] = []
            size = tokens = 0
            for line in group:
                n = len(self.encode(line))
                fits = (
                    len(chunk) < self.limits.max_requests
                    and size + self.separator_bytes + n <= self.limits.max_bytes
                    and (token_limit is None or tokens + line.input_tokens <= token_limit)
                )
                if chunk and not fits:
                    chunks.append(chunk)
                    chunk, size, tokens = [], 0, 0
                size += n + (self.separator_bytes if chunk else self.envelope_bytes)
                tokens += line.input_tokens
                chunk.append(line)
            if chunk:
                chunks.append(chunk)
        return chunks

    async def submit(
        self, lines: Sequence[BatchLine], *, metadata: Mapping[str, str], completion_window: str = "24h"
    ) -> ProviderBatch:
        """Create one provider batch of `lines` (one chunk of `plan`); idempotent as the module says."""
        self.check(lines)
        given = metadata.get(IDEMPOTENCY_KEY)
        key = given or uuid.uuid4().hex
        batch = await self._submit(lines, {**metadata, IDEMPOTENCY_KEY: key}, completion_window, given is not None)
        self._claimed.add(batch.provider_batch_id)
        return batch

    @abstractmethod
    async def poll(self, provider_batch_id: str) -> ProviderBatch:
        """The batch as the provider reports it now."""

    @abstractmethod
    def results(self, batch: ProviderBatch) -> AsyncIterator[LineResult]:
        """Every line of an ended batch, once each (`async for`)."""

    @abstractmethod
    async def cancel(self, provider_batch_id: str) -> ProviderBatch:
        """Ask the provider to stop the batch; answered lines are kept. Cancelling an ended batch is a no-op."""

    # -- what each wire defines ------------------------------------------------------------------------

    @abstractmethod
    def encode(self, line: BatchLine) -> bytes:
        """The bytes `line` takes in the batch sent."""

    @abstractmethod
    def payload(self, lines: Sequence[BatchLine]) -> bytes:
        """The bytes sent for a batch of `lines` (the file, or the request body), measured by `plan`."""

    def group(self, line: BatchLine) -> str:
        """Lines of different groups never share a batch."""
        return ""

    def token_limit(self, group: str) -> int | None:
        """The enqueued-token limit a group's batches must each fit (None: no such limit)."""
        return None

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Authentication and version headers of every call."""

    @abstractmethod
    async def _submit(
        self, lines: Sequence[BatchLine], metadata: dict[str, str], completion_window: str, given: bool
    ) -> ProviderBatch:
        """Create the batch, looking for one already made where a retry may have created it."""

    # -- shared ----------------------------------------------------------------------------------------

    def check(self, lines: Sequence[BatchLine]) -> None:
        """Refuse a batch the provider would refuse, before sending anything."""
        if not lines:
            raise TerminalError("empty_batch", "a provider batch needs at least one line")
        if len(lines) > self.limits.max_requests:
            raise TerminalError(
                "batch_too_large", f"{len(lines)} lines; a batch takes {self.limits.max_requests}: split with plan()"
            )
        seen: set[str] = set()
        for line in lines:
            if not CUSTOM_ID.fullmatch(line.custom_id):
                raise TerminalError("invalid_custom_id", f"custom_id {line.custom_id!r} must match {CUSTOM_ID.pattern}")
            if line.custom_id in seen:
                raise TerminalError("duplicate_custom_id", f"custom_id {line.custom_id!r} appears twice in the batch")
            seen.add(line.custom_id)
        if len({self.group(line) for line in lines}) > 1:
            raise TerminalError("mixed_models", f"a {self.wire} batch holds one model: split with plan()")

    def unanswered(self, custom_id: str, batch: ProviderBatch, *, why: Outcome | None = None) -> LineResult:
        """A line the provider never ran: expired, cancelled, in a failed batch, or missing from its results.

        `why` is the line's own outcome where the provider says it; otherwise the batch's status decides.
        """
        if why == "expired" or (why is None and batch.status is BatchStatus.EXPIRED):
            error: ProviderError = TransientError("batch_expired", "the completion window closed before this line ran")
            return LineResult(custom_id, None, error, "expired", None)
        if why == "cancelled" or (why is None and batch.status is BatchStatus.CANCELLED):
            error = TransientError("batch_cancelled", "the batch was cancelled before this line ran")
            return LineResult(custom_id, None, error, "cancelled", None)
        if batch.error is not None:
            return LineResult(custom_id, None, batch.error, "errored", None)
        error = TransientError("missing_result", f"batch {batch.provider_batch_id} returned no result for this line")
        return LineResult(custom_id, None, error, "errored", None)

    def answered(
        self, custom_id: str, status: int, headers: Mapping[str, str], body: bytes, request_id: str | None
    ) -> LineResult:
        """A line the provider answered, read by the online adapter as an online answer is."""
        try:
            completion = self.adapter.parse(status, headers, body)
        except ProviderError as exc:
            return LineResult(custom_id, None, exc, "errored", request_id)
        return LineResult(custom_id, completion, None, "succeeded", completion.request_id or request_id)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0))
            self._http = httpx.AsyncClient(
                base_url=self.adapter.base_url + "/", timeout=timeout, transport=self._transport
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def send(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One call; its failure as the `ProviderError` it means."""
        try:
            headers = {**self.headers(), **options.pop("headers", {})}
            response = await self._client().request(method, path, headers=headers, **options)
        except httpx.TimeoutException as exc:
            raise TransientError("timeout", f"{method} {path}: no answer within {self.timeout_s:g} s") from exc
        except httpx.TransportError as exc:
            raise TransientError("connection_error", f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            raise classify(response.status_code, response.headers, response.content)
        return response

    async def call(
        self, method: str, path: str, *, final: frozenset[int] = frozenset(), **options: Any
    ) -> httpx.Response:
        """`send`, retried on what is worth retrying (only for calls that are safe to repeat).

        `final`: statuses that answer the call (e.g. a 409 to a cancel: it has ended), raised at once.
        """
        async for attempt in self.attempts(final):
            with attempt:
                return await self.send(method, path, **options)
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def json(
        self, method: str, path: str, *, final: frozenset[int] = frozenset(), **options: Any
    ) -> dict[str, Any]:
        response = await self.call(method, path, final=final, **options)
        try:
            data = response.json()
        except ValueError as exc:
            raise TransientError("malformed_body", f"{method} {path}: the answer is not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise TransientError("malformed_body", f"{method} {path}: the answer is not a JSON object")
        return data

    async def jsonl(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """The rows of a JSONL file the provider serves (read whole, so a retry never repeats a row)."""
        response = await self.call("GET", path)
        for raw in response.content.splitlines():
            if raw.strip():
                row = json.loads(raw)
                if isinstance(row, dict):
                    yield row

    def attempts(self, final: frozenset[int] = frozenset()) -> AsyncIterable[stamina.Attempt]:
        return retry.until_async(
            on=lambda exc: not (isinstance(exc, ProviderError) and exc.status in final) and self._retry_wait(exc),
            timeout_s=self.retry_timeout_s,
            first_s=self.retry_first_s,
            max_s=30.0,
            jitter_s=self.retry_first_s,
        )

    def _retry_wait(self, exc: Exception) -> bool | float:
        """Retry transient errors; a 429 waits what its Retry-After says, or is raised when that is too long."""
        if isinstance(exc, RateLimitedError) and exc.retry_after_s is not None:
            return False if exc.retry_after_s > self.max_retry_after_s else max(exc.retry_after_s, 0.0)
        return isinstance(exc, TransientError)

    async def idempotent(
        self,
        create: Callable[[], Awaitable[ProviderBatch]],
        find: Callable[[], Awaitable[ProviderBatch | None]],
        *,
        look_first: bool,
    ) -> ProviderBatch:
        """`create`, retried; before each retry (and the first attempt when `look_first`) `find` an earlier one."""
        tried = False
        async for attempt in self.attempts():
            with attempt:
                if tried or look_first:
                    found = await find()
                    if found is not None:
                        return found
                tried = True
                return await create()
        raise AssertionError("unreachable: stamina re-raises the last error")


def batch_client_for(
    name: str,
    config: ProviderConfig,
    *,
    simulator_url: str | None = None,
    simulator: SimulatorConfig | None = None,
    limits: BatchLimits | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> BatchClient:
    """The batch client of provider `name`: the wire `adapter_for` picks (a simulator speaks it by name).

    Limits, strongest first: `limits`, the provider's `batch_*` settings, a simulator provider's
    `SimulatorConfig` batch limits, the provider's published limits. `options` go to the client
    (`retry_timeout_s`, `retry_first_s`, `max_retry_after_s`).
    """
    # Imported here: the wire modules subclass this one's BatchClient.
    from batchrouter.execution.provider_batches.anthropic import AnthropicBatchClient
    from batchrouter.execution.provider_batches.openai import OpenAIBatchClient
    from batchrouter.execution.providers import AnthropicAdapter, OpenAIAdapter, adapter_for

    if config.kind == "simulator" and not (config.base_url or simulator_url):
        # Never the real provider's address with the simulator's key: the caller says where the built-in
        # simulator is (the batch lane asks `simulator.shared`, which starts it when none runs).
        raise ConfigError(
            f"provider {name} is the built-in simulator and no address for it was given; give it a base_url "
            "(a `batchrouter simulate` server) or pass the built-in simulator's URL"
        )
    adapter = adapter_for(name, config, simulator_url=simulator_url)
    cls: type[BatchClient]
    if isinstance(adapter, AnthropicAdapter):
        cls = AnthropicBatchClient
    elif type(adapter) is OpenAIAdapter:
        cls = OpenAIBatchClient
    else:
        raise ConfigError(
            f"provider {name} (kind {config.kind}) has no batch API: only OpenAI and Anthropic, or the simulator "
            "speaking their wire, run provider batches; use the online lane for it"
        )
    sim = simulator if config.kind == "simulator" else None
    default = cls.default_limits
    per_model = dict(default.enqueued_tokens)
    tokens_default = default.enqueued_tokens_default
    if cls is OpenAIBatchClient:  # only OpenAI limits enqueued tokens
        if sim is not None:
            per_model.update(sim.batch_enqueued_tokens_per_model)
            tokens_default = sim.batch_enqueued_tokens or tokens_default
        per_model.update(config.batch_enqueued_tokens_per_model)
        tokens_default = config.batch_enqueued_tokens or tokens_default
    resolved = limits or BatchLimits(
        max_requests=config.batch_max_requests or (sim and sim.batch_max_requests) or default.max_requests,
        max_bytes=config.batch_max_bytes or (sim and sim.batch_max_bytes) or default.max_bytes,
        enqueued_tokens=per_model,
        enqueued_tokens_default=tokens_default,
    )
    return cls(adapter, limits=resolved, timeout_s=config.timeout_s, transport=transport, **options)
