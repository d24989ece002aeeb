"""The provider batch clients over real HTTP against the simulator's OpenAI and Anthropic batch APIs.

Each simulator runs batches on an accelerated clock; tests poll with generous deadlines and assert on
what the client reports, never on wall time. Faults a simulator cannot make (a lost answer, a 429)
are made by a transport that wraps the real one: the request still reaches the simulator.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from batchrouter.core.config import ProviderConfig, SimulatorConfig
from batchrouter.core.errors import BatchCapacityError, RateLimitedError, TerminalError, TransientError
from batchrouter.execution.provider_batches import (
    IDEMPOTENCY_KEY,
    BatchClient,
    BatchLimits,
    BatchLine,
    BatchStatus,
    LineResult,
    ProviderBatch,
    batch_client_for,
)
from batchrouter.execution.providers import RequestItem, adapter_for
from batchrouter.simulator import running_simulator

pytestmark = pytest.mark.integration

DEADLINE_S = 120.0
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-20250514"}
WIRES = ["openai", "anthropic"]
T = TypeVar("T")


def _config(**fields: Any) -> SimulatorConfig:
    return SimulatorConfig(latency_ms=0, max_output_words=16, seed=11, **fields)


class Simulator:
    def __init__(self, url: str, config: SimulatorConfig) -> None:
        self.url, self.config = url, config


def _simulator(**fields: Any) -> Iterator[Simulator]:
    config = _config(**fields)
    with running_simulator(config) as url:
        yield Simulator(url, config)


@pytest.fixture(scope="module")
def fast() -> Iterator[Simulator]:
    """Batches end within a provider quarter hour: milliseconds of wall time."""
    yield from _simulator(batch_time_scale=100_000, batch_median_s=600, batch_sigma=0.5)


@pytest.fixture(scope="module")
def phases() -> Iterator[Simulator]:
    """Each phase lasts seconds of wall time (at least 2.5 s), so polls see every one."""
    yield from _simulator(
        batch_time_scale=1000, batch_validating_s=5000, batch_median_s=4000, batch_sigma=0, batch_finalizing_s=5000
    )


@pytest.fixture(scope="module")
def slow() -> Iterator[Simulator]:
    """Batches run a provider half-day (about 40 s of wall time); 500 tokens of gpt-4.1-mini may be enqueued."""
    yield from _simulator(
        batch_time_scale=1000,
        batch_median_s=40_000,
        batch_sigma=0,
        batch_cancel_s=300,
        batch_enqueued_tokens_per_model={"gpt-4.1-mini": 500},
    )


@pytest.fixture(scope="module")
def expiring() -> Iterator[Simulator]:
    """Every batch needs 2.3 provider days; its 24 h window closes within about a second."""
    yield from _simulator(batch_time_scale=100_000, batch_median_s=200_000, batch_sigma=0)


@pytest.fixture(scope="module")
def stuck() -> Iterator[Simulator]:
    """Every batch stops moving part-way through in_progress and never ends on its own."""
    yield from _simulator(
        batch_time_scale=100_000,
        batch_median_s=600,
        batch_sigma=0,
        batch_stuck_rate=1.0,
        batch_stuck_states=["in_progress"],
    )


@pytest.fixture(scope="module")
def small() -> Iterator[Simulator]:
    """A provider that takes at most 5 requests and 4,000 bytes per batch."""
    yield from _simulator(batch_time_scale=100_000, batch_median_s=600, batch_sigma=0.5, batch_max_requests=5,
                          batch_max_bytes=4000)  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------------------


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout=4 * DEADLINE_S)  # a hang fails the test, not the suite

    return asyncio.run(bounded())


def client(sim: Simulator, wire: str, **options: Any) -> BatchClient:
    return batch_client_for(wire, ProviderConfig(kind="simulator"), simulator_url=sim.url, simulator=sim.config,
                            retry_first_s=0.01, **options)  # fmt: skip


def item(i: int, text: str | None = None, *, max_tokens: int = 32, **fields: Any) -> RequestItem:
    return RequestItem(f"item-{i}", [{"role": "user", "content": text or f"tell me about thing {i}"}], max_tokens,
                       **fields)  # fmt: skip


def lines(wire: str, n: int, *, prefix: str = "l", model: str | None = None, **fields: Any) -> list[BatchLine]:
    upstream = model or MODELS[wire]
    return [BatchLine(f"{prefix}{i}", item(i, **fields), upstream, 12) for i in range(n)]


async def until(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, what: str) -> T:
    """Read until `done` holds, within a generous deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = await read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {DEADLINE_S} s; last seen {value!r}")
        await asyncio.sleep(0.02)


async def ended(batch_client: BatchClient, batch: ProviderBatch) -> ProviderBatch:
    return await until(lambda: batch_client.poll(batch.provider_batch_id), lambda b: b.ended, what="ended")


async def collect(batch_client: BatchClient, batch: ProviderBatch) -> dict[str, LineResult]:
    found: dict[str, LineResult] = {}
    async for result in batch_client.results(batch):
        assert result.custom_id not in found, f"{result.custom_id} came back twice"
        assert (result.completion is None) != (result.error is None)
        found[result.custom_id] = result
    return found


def provider_now(sim: Simulator) -> float:
    """The simulator's provider clock, read as a new file's `created_at`."""
    response = httpx.post(f"{sim.url}/files", headers={"authorization": "Bearer k"}, data={"purpose": "batch"},
                          files={"file": ("clock.jsonl", b"", "application/jsonl")})  # fmt: skip
    return float(response.json()["created_at"])


class Faults(httpx.AsyncBaseTransport):
    """The real transport, with faults: `lose` forwards a request and drops its answer; `answer` replaces it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose: list[tuple[str, str]] = []  # (method, path) whose next answer is lost
        self.answer: list[tuple[str, str, httpx.Response]] = []  # answered instead of forwarding, once each
        self.forwarded: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        for planned in self.answer:
            if planned[:2] == key:
                self.answer.remove(planned)
                return planned[2]
        self.forwarded.append(key)
        response = await self.inner.handle_async_request(request)
        if key in self.lose:
            self.lose.remove(key)
            await response.aread()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- a batch that completes ------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_a_completed_batch_gives_each_line_the_completion_an_online_call_gives(fast: Simulator, wire: str) -> None:
    batch_lines = lines(wire, 5)

    async def scenario() -> tuple[ProviderBatch, dict[str, LineResult], dict[str, Any]]:
        async with client(fast, wire) as batch_client:
            batch = await ended(batch_client, await batch_client.submit(batch_lines, metadata={"job": "walk"}))
            results = await collect(batch_client, batch)
        adapter = adapter_for(wire, ProviderConfig(kind="simulator"), simulator_url=fast.url)
        online = {}
        async with httpx.AsyncClient() as http:
            for line in batch_lines:
                request = adapter.build(line.item, line.upstream)
                # The same body, in the bytes the simulator draws a batch line's answer from (its words
                # come from a digest of the body: online of the raw bytes, in a batch of sorted JSON).
                same = json.dumps(json.loads(request.body), sort_keys=True).encode()
                answer = await http.post(request.url, content=same, headers=request.headers)
                online[line.custom_id] = adapter.parse(answer.status_code, answer.headers, answer.content)
        return batch, results, online

    batch, results, online = run(scenario)
    assert batch.status is BatchStatus.COMPLETED and batch.ended_at is not None and batch.ended_at >= batch.created_at
    assert (batch.total, batch.succeeded, batch.failed) == (5, 5, 0)
    assert set(results) == {line.custom_id for line in batch_lines}
    for custom_id, result in results.items():
        assert result.outcome == "succeeded" and result.error is None and result.request_id
        completion, alone = result.completion, online[custom_id]
        assert completion is not None
        assert 0 < completion.input_tokens and 0 < completion.output_tokens <= 32
        same = ("text", "finish_reason", "input_tokens", "output_tokens", "choices")
        assert {f: getattr(completion, f) for f in same} == {f: getattr(alone, f) for f in same}


@pytest.mark.parametrize("wire", WIRES)
def test_lines_the_provider_rejects_come_back_with_its_error(fast: Simulator, wire: str) -> None:
    batch_lines = [
        BatchLine("good", item(0), MODELS[wire], 10),
        BatchLine("hot", item(1, temperature=5.0), MODELS[wire], 10),
        BatchLine("boom", item(2, "x [[sim:500]]"), MODELS[wire], 10),
    ]

    async def scenario() -> tuple[ProviderBatch, dict[str, LineResult]]:
        async with client(fast, wire) as batch_client:
            batch = await ended(batch_client, await batch_client.submit(batch_lines, metadata={}))
            return batch, await collect(batch_client, batch)

    batch, results = run(scenario)
    assert batch.status is BatchStatus.COMPLETED and (batch.succeeded, batch.failed) == (1, 2)
    assert results["good"].outcome == "succeeded"
    hot, boom = results["hot"], results["boom"]
    assert hot.outcome == "errored" and isinstance(hot.error, TerminalError) and hot.error.status == 400
    assert "temperature" in hot.error.message and hot.request_id
    assert boom.outcome == "errored" and isinstance(boom.error, TransientError) and boom.error.retryable


# -- every status ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "walk"),
    [("openai", ["validating", "in_progress", "finalizing", "completed"]), ("anthropic", ["in_progress", "completed"])],
)
def test_poll_sees_every_status_of_a_batch_in_order(phases: Simulator, wire: str, walk: list[str]) -> None:
    async def scenario() -> list[str]:
        async with client(phases, wire) as batch_client:
            batch = await batch_client.submit(lines(wire, 4), metadata={})
            seen = [batch.status.value]

            async def read() -> ProviderBatch:
                current = await batch_client.poll(batch.provider_batch_id)
                if current.status != seen[-1]:
                    seen.append(current.status.value)
                return current

            await until(read, lambda b: b.ended, what="ended")
            return seen

    assert run(scenario) == walk


@pytest.mark.parametrize("wire", WIRES)
def test_cancel_goes_through_cancelling_to_cancelled_and_keeps_the_answered_lines(slow: Simulator, wire: str) -> None:
    batch_lines = lines(wire, 30)

    async def scenario() -> tuple[ProviderBatch, ProviderBatch, dict[str, LineResult], ProviderBatch]:
        async with client(slow, wire) as batch_client:
            batch = await batch_client.submit(batch_lines, metadata={})
            await until(lambda: batch_client.poll(batch.provider_batch_id), lambda b: b.status == "in_progress",
                        what="in_progress")  # fmt: skip
            cancelling = await batch_client.cancel(batch.provider_batch_id)
            done = await ended(batch_client, batch)
            again = await batch_client.cancel(batch.provider_batch_id)  # an ended batch: a no-op
            return cancelling, done, await collect(batch_client, done), again

    cancelling, done, results, again = run(scenario)
    assert cancelling.status is BatchStatus.CANCELLING
    assert done.status is BatchStatus.CANCELLED and done.ended_at is not None
    assert again.status is BatchStatus.CANCELLED
    assert set(results) == {line.custom_id for line in batch_lines}  # every line, once
    cancelled = [r for r in results.values() if r.outcome == "cancelled"]
    assert cancelled
    assert all(isinstance(r.error, TransientError) and r.error.code == "batch_cancelled" for r in cancelled)
    assert {r.outcome for r in results.values()} <= {"succeeded", "cancelled"}
    assert sum(r.outcome == "succeeded" for r in results.values()) == done.succeeded


@pytest.mark.parametrize("wire", WIRES)
def test_an_expired_batch_returns_its_answered_lines_and_the_rest_expired(expiring: Simulator, wire: str) -> None:
    batch_lines = lines(wire, 10)

    async def scenario() -> tuple[ProviderBatch, dict[str, LineResult]]:
        async with client(expiring, wire) as batch_client:
            batch = await ended(batch_client, await batch_client.submit(batch_lines, metadata={}))
            return batch, await collect(batch_client, batch)

    batch, results = run(scenario)
    assert batch.status is BatchStatus.EXPIRED and batch.ended_at is not None
    succeeded = [r for r in results.values() if r.outcome == "succeeded"]
    expired = [r for r in results.values() if r.outcome == "expired"]
    assert 0 < len(succeeded) < 10 and len(succeeded) + len(expired) == 10 == len(results)
    assert len(succeeded) == batch.succeeded and batch.failed == len(expired)
    assert all(r.completion is not None and r.completion.output_tokens > 0 for r in succeeded)
    assert all(isinstance(r.error, TransientError) and r.error.code == "batch_expired" for r in expired)


def test_a_batch_whose_file_the_provider_refuses_fails_and_every_line_gets_that_error(small: Simulator) -> None:
    batch_lines = lines("openai", 6)  # the provider takes 5; a client told otherwise sends 6

    async def scenario() -> tuple[ProviderBatch, dict[str, LineResult]]:
        async with client(small, "openai", limits=BatchLimits(max_requests=100, max_bytes=10**6)) as batch_client:
            batch = await ended(batch_client, await batch_client.submit(batch_lines, metadata={}))
            return batch, await collect(batch_client, batch)

    batch, results = run(scenario)
    assert batch.status is BatchStatus.FAILED and batch.total == 0
    assert isinstance(batch.error, TerminalError) and batch.error.code == "too_many_tasks"
    assert set(results) == {line.custom_id for line in batch_lines}
    assert all(r.outcome == "errored" and r.error is batch.error for r in results.values())


@pytest.mark.parametrize("wire", WIRES)
def test_a_stuck_batch_stays_in_its_state_past_its_window_and_cancel_still_ends_it(stuck: Simulator, wire: str) -> None:
    batch_lines = lines(wire, 8)

    async def scenario() -> tuple[ProviderBatch, ProviderBatch, dict[str, LineResult]]:
        async with client(stuck, wire) as batch_client:
            batch = await batch_client.submit(batch_lines, metadata={})
            window_end = batch.created_at + 86_400
            await until(lambda: asyncio.to_thread(provider_now, stuck), lambda now: now > window_end + 86_400,
                        what="a day past the window")  # fmt: skip
            frozen = await batch_client.poll(batch.provider_batch_id)
            await batch_client.cancel(batch.provider_batch_id)
            done = await ended(batch_client, batch)
            return frozen, done, await collect(batch_client, done)

    frozen, done, results = run(scenario)
    assert frozen.status is BatchStatus.IN_PROGRESS and frozen.ended_at is None
    assert done.status is BatchStatus.CANCELLED
    assert len(results) == 8 and {r.outcome for r in results.values()} <= {"succeeded", "cancelled"}
    assert any(r.outcome == "cancelled" for r in results.values())


# -- plan ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_plan_splits_by_requests_and_by_bytes_into_batches_the_provider_takes(small: Simulator, wire: str) -> None:
    short = lines(wire, 12, prefix="s")
    long = lines(wire, 6, prefix="w", text="many words here " * 60)  # about 1,000 bytes a line

    async def scenario() -> tuple[list[list[BatchLine]], list[list[BatchLine]], list[ProviderBatch], list[int]]:
        async with client(small, wire) as batch_client:
            assert (batch_client.limits.max_requests, batch_client.limits.max_bytes) == (5, 4000)
            by_requests, by_bytes = batch_client.plan(short), batch_client.plan(long)
            done = []
            for chunk in by_requests + by_bytes:
                done.append(await ended(batch_client, await batch_client.submit(chunk, metadata={})))
            sizes = []
            if wire == "openai":  # the file the provider holds is exactly the bytes plan measured
                for batch in done:
                    found = await batch_client.json("GET", f"files/{batch.raw['input_file_id']}")
                    sizes.append(int(found["bytes"]))
            return by_requests, by_bytes, done, sizes

    by_requests, by_bytes, done, sizes = run(scenario)
    assert [len(c) for c in by_requests] == [5, 5, 2]
    assert [line for chunk in by_requests for line in chunk] == short
    assert len(by_bytes) > 1 and all(len(c) < 5 for c in by_bytes)
    assert [line for chunk in by_bytes for line in chunk] == long
    assert all(b.status is BatchStatus.COMPLETED and b.succeeded == b.total for b in done)
    assert sum(b.total for b in done) == 18
    if wire == "openai":
        c = client(small, wire)
        measured = [sum(len(c.encode(line)) for line in chunk) for chunk in by_requests + by_bytes]
        assert sizes == measured and max(sizes) <= 4000


# -- idempotent submit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_a_submit_retried_after_a_lost_answer_makes_exactly_one_provider_batch(fast: Simulator, wire: str) -> None:
    path = "/v1/batches" if wire == "openai" else "/v1/messages/batches"

    async def scenario() -> tuple[ProviderBatch, list[str], list[tuple[str, str]]]:
        faults = Faults()
        faults.lose.append(("POST", path))
        async with client(fast, wire) as observer:
            async with client(fast, wire, transport=faults) as batch_client:
                batch = await batch_client.submit(lines(wire, 3, prefix="lost"), metadata={"job": "lost-answer"})
            listed = await observer.json("GET", path.removeprefix("/v1/"), params={"limit": 100})
        return batch, [row["id"] for row in listed["data"]], faults.forwarded

    batch, listed, forwarded = run(scenario)
    assert forwarded.count(("POST", path)) == 1  # the retry found the batch instead of creating another
    assert listed[0] == batch.provider_batch_id and batch.total in (0, 3)  # the newest is the one made
    if wire == "openai":
        assert batch.raw["metadata"]["job"] == "lost-answer" and batch.raw["metadata"][IDEMPOTENCY_KEY]


def test_an_openai_submit_with_our_key_finds_the_batch_an_earlier_process_made(fast: Simulator) -> None:
    batch_lines = lines("openai", 2, prefix="again")
    metadata = {IDEMPOTENCY_KEY: "batch-7-part-1"}

    async def scenario() -> tuple[ProviderBatch, ProviderBatch, list[tuple[str, str]]]:
        faults = Faults()
        async with client(fast, "openai") as first_process:
            first = await first_process.submit(batch_lines, metadata=metadata)
        async with client(fast, "openai", transport=faults) as second_process:
            second = await second_process.submit(batch_lines, metadata=metadata)
        return first, second, faults.forwarded

    first, second, forwarded = run(scenario)
    assert second.provider_batch_id == first.provider_batch_id
    assert ("POST", "/v1/batches") not in forwarded and ("POST", "/v1/files") not in forwarded  # found first


# -- errors of the batch API -----------------------------------------------------------------------------


def token_lines(prefix: str, n: int, *, tokens: int) -> list[BatchLine]:
    """Lines of gpt-4.1-mini (500 enqueued tokens on `slow`) of about 32 input tokens, declared as `tokens`."""
    words = "count these twenty words please " * 5
    return [BatchLine(f"{prefix}{i}", item(i, words), "gpt-4.1-mini", tokens) for i in range(n)]


def test_a_submit_over_the_enqueued_token_limit_is_refused_retryably_until_capacity_frees(slow: Simulator) -> None:
    first_lines, held = token_lines("a", 8, tokens=32), token_lines("b", 12, tokens=32)  # 256 + 384 > 500

    async def scenario() -> tuple[BatchCapacityError, list[tuple[str, str]], ProviderBatch]:
        faults = Faults()
        async with client(slow, "openai", transport=faults) as batch_client:
            assert batch_client.limits.enqueued_limit("gpt-4.1-mini") == 500
            first = await batch_client.submit(first_lines, metadata={})
            sent = len(faults.forwarded)
            with pytest.raises(BatchCapacityError) as info:
                await batch_client.submit(held, metadata={})
            refused_calls = faults.forwarded[sent:]
            await batch_client.cancel(first.provider_batch_id)
            await ended(batch_client, first)
            again = await batch_client.submit(held, metadata={})
            again = await until(lambda: batch_client.poll(again.provider_batch_id),
                                lambda b: b.status != "validating", what="validated")  # fmt: skip
            await batch_client.cancel(again.provider_batch_id)
            return info.value, refused_calls, again

    refused, calls, again = run(scenario)
    assert refused.retryable and refused.code == "token_limit_exceeded" and "256" in refused.message
    assert ("POST", "/v1/files") not in calls and ("POST", "/v1/batches") not in calls  # nothing was made
    assert again.status is BatchStatus.IN_PROGRESS


def test_a_batch_the_provider_finds_over_the_enqueued_token_limit_fails_with_a_capacity_error(slow: Simulator) -> None:
    # Declared as 1 token a line (tokens undercounted, or the batches in flight are not ours): only the
    # provider sees that the two batches together pass its limit.
    first_lines, held = token_lines("c", 8, tokens=1), token_lines("d", 12, tokens=1)

    async def scenario() -> tuple[ProviderBatch, dict[str, LineResult]]:
        async with client(slow, "openai") as batch_client:
            first = await batch_client.submit(first_lines, metadata={})
            refused = await ended(batch_client, await batch_client.submit(held, metadata={}))
            results = await collect(batch_client, refused)
            await batch_client.cancel(first.provider_batch_id)
            await ended(batch_client, first)
            return refused, results

    refused, results = run(scenario)
    assert refused.status is BatchStatus.FAILED
    assert isinstance(refused.error, BatchCapacityError) and refused.error.retryable
    assert refused.error.code == "token_limit_exceeded" and "Enqueued token limit" in refused.error.message
    assert set(results) == {line.custom_id for line in held}
    assert all(isinstance(r.error, BatchCapacityError) and r.outcome == "errored" for r in results.values())


@pytest.mark.parametrize("wire", WIRES)
def test_a_429_waits_its_retry_after_and_a_5xx_is_retried(fast: Simulator, wire: str) -> None:
    path = "/v1/batches" if wire == "openai" else "/v1/messages/batches"

    async def scenario() -> tuple[ProviderBatch, ProviderBatch, list[tuple[str, str]]]:
        faults = Faults()
        async with client(fast, wire, transport=faults) as batch_client:
            batch = await batch_client.submit(lines(wire, 1), metadata={})
            limited = httpx.Response(429, headers={"retry-after": "0.01"}, json={"error": {"message": "slow down"}})
            failing = httpx.Response(503, json={"error": {"message": "try later"}})
            get = ("GET", f"{path}/{batch.provider_batch_id}")
            faults.answer += [(*get, limited), (*get, failing)]
            polled = await batch_client.poll(batch.provider_batch_id)
        return batch, polled, faults.forwarded

    batch, polled, forwarded = run(scenario)
    assert polled.provider_batch_id == batch.provider_batch_id
    assert forwarded.count(("GET", f"{path}/{batch.provider_batch_id}")) == 1  # after the 429 and the 503


def test_a_retry_after_longer_than_the_client_waits_is_raised(fast: Simulator) -> None:
    async def scenario() -> None:
        faults = Faults()
        faults.answer.append(("GET", "/v1/batches", httpx.Response(429, headers={"retry-after": "3600"}, json={})))
        async with client(fast, "openai", transport=faults, max_retry_after_s=60) as batch_client:
            await batch_client.json("GET", "batches")

    with pytest.raises(RateLimitedError) as info:
        run(scenario)
    assert info.value.retry_after_s == 3600


@pytest.mark.parametrize("wire", WIRES)
def test_a_4xx_is_terminal_with_the_providers_message(fast: Simulator, wire: str) -> None:
    async def scenario() -> None:
        async with client(fast, wire) as batch_client:
            await batch_client.poll("batch_does_not_exist")

    with pytest.raises(TerminalError) as info:
        run(scenario)
    assert info.value.status == 404 and "batch_does_not_exist" in info.value.message
