"""The simulator's provider batch APIs, driven over real HTTP by the official `openai` and `anthropic` SDKs.

Each simulator runs its batches on an accelerated clock, so a provider day passes in about a second of
wall time where a test needs the window to close. Tests poll with generous deadlines and assert on
what the SDK reads, never on wall time.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anthropic
import openai
import pytest
from openai.types import Batch

from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator import running_simulator

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]

MODEL = "gpt-4o-mini"
FLEX_MODEL = "o4-mini"
CLAUDE = "claude-sonnet-4-20250514"
DEADLINE_S = 90.0
T = TypeVar("T")
OPENAI_ORDER = ["validating", "in_progress", "finalizing", "completed"]


def _config(**fields: Any) -> SimulatorConfig:
    return SimulatorConfig(latency_ms=0, max_output_words=16, seed=7, **fields)


@pytest.fixture(scope="module")
def fast() -> Iterator[str]:
    """Batches end within a provider quarter hour, a few milliseconds of wall time; small limits."""
    config = _config(
        batch_time_scale=100_000,
        batch_median_s=600,
        batch_sigma=0.5,
        batch_max_requests=20,
        batch_max_bytes=20_000,
    )
    with running_simulator(config) as base:
        yield base


@pytest.fixture(scope="module")
def slow() -> Iterator[str]:
    """Batches of 40 lines take a provider half-day, about 40 s of wall time: long enough to cancel mid-way."""
    config = _config(
        batch_time_scale=1000,
        batch_median_s=40_000,
        batch_sigma=0,
        batch_cancel_s=300,
        batch_enqueued_tokens_per_model={"gpt-4.1-mini": 500},
    )
    with running_simulator(config) as base:
        yield base


@pytest.fixture(scope="module")
def expiring() -> Iterator[str]:
    """Every batch needs more than its 24 h window (2.3 provider days), and the window closes in ~1 s."""
    config = _config(batch_time_scale=100_000, batch_median_s=200_000, batch_sigma=0)
    with running_simulator(config) as base:
        yield base


@pytest.fixture(scope="module")
def stuck() -> Iterator[str]:
    """Every batch gets stuck in one state and never ends on its own."""
    config = _config(
        batch_time_scale=100_000,
        batch_median_s=600,
        batch_sigma=0,
        batch_stuck_rate=1.0,
        batch_stuck_states=["validating", "in_progress", "finalizing"],
    )
    with running_simulator(config) as base:
        yield base


def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=30)


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="k", max_retries=0, timeout=30)


def poll(read: Callable[[], T], done: Callable[[T], bool], *, what: str) -> T:
    """Read until `done` holds, within a generous deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {DEADLINE_S} s; last seen {value!r}")
        time.sleep(0.02)


def chat_line(custom_id: str, text: str, *, model: str = MODEL, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_completion_tokens": 64, **body},
    }


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload(client: openai.OpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def submit(client: openai.OpenAI, rows: list[dict[str, Any]], **options: Any) -> Batch:
    return client.batches.create(
        input_file_id=upload(client, jsonl(rows)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **options,
    )


def wait_status(client: openai.OpenAI, batch_id: str, *statuses: str) -> Batch:
    return poll(
        lambda: client.batches.retrieve(batch_id), lambda b: b.status in statuses, what=f"{batch_id} {statuses}"
    )


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def bills(url: str, wire: str) -> dict[str, dict[str, Any]]:
    """The simulator's own charge per batch (`/_batches/WIRE`), read through the SDK's generic GET."""
    found = claude(url).get(f"/_batches/{wire}", cast_to=object)
    assert isinstance(found, dict)
    return {row["id"]: row for row in found["data"]}


def provider_now(client: openai.OpenAI) -> int:
    """The simulator's provider clock, read as a new file's `created_at`."""
    return client.files.create(file=("clock.jsonl", io.BytesIO(b"")), purpose="batch").created_at


# -- OpenAI Files ----------------------------------------------------------------------------------------


def test_openai_files_upload_retrieve_read_list_and_delete(fast: str) -> None:
    client = oai(fast)
    data = jsonl([chat_line("a", "hello")])
    created = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.object == "file" and created.purpose == "batch" and created.status == "processed"
    assert created.bytes == len(data) and created.filename == "in.jsonl"
    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).content == data
    assert created.id in [f.id for f in client.files.list(purpose="batch")]
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)


def test_openai_files_list_pages_newest_first(fast: str) -> None:
    client = oai(fast)
    ids = [upload(client, jsonl([chat_line("a", f"page {i}")]), f"page{i}.jsonl") for i in range(5)]
    page = client.files.list(limit=2, purpose="batch", order="desc")
    assert [f.id for f in page.data] == ids[::-1][:2]
    assert page.has_more
    listed = [f.id for f in client.files.list(limit=2, purpose="batch", order="desc")]
    assert listed[:5] == ids[::-1]
    ascending = [f.id for f in client.files.list(limit=3, purpose="batch", order="asc")]
    assert [i for i in ascending if i in ids] == ids


def test_openai_file_expires_after_its_anchor(fast: str) -> None:
    client = oai(fast)
    created = client.files.create(
        file=("short.jsonl", io.BytesIO(b"{}\n")),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600

    def gone() -> bool:
        try:
            client.files.retrieve(created.id)
        except openai.NotFoundError:
            return True
        return False

    poll(gone, bool, what="the file expired")


def test_openai_batch_file_must_be_jsonl(fast: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(fast).files.create(file=("in.csv", io.BytesIO(b"a,b\n")), purpose="batch")
    assert "jsonl" in info.value.message


# -- OpenAI batches: the way to completed ----------------------------------------------------------------


def test_openai_batch_walks_validating_in_progress_finalizing_completed(fast: str) -> None:
    client = oai(fast)
    rows = [chat_line(f"req-{i}", f"question {i}") for i in range(6)]
    batch = submit(client, rows, metadata={"job": "walk"})
    assert batch.status == "validating"
    assert batch.request_counts is not None and batch.request_counts.total == 0
    seen = [batch.status]

    def read() -> Batch:
        current = client.batches.retrieve(batch.id)
        if current.status != seen[-1]:
            seen.append(current.status)
        return current

    done = poll(read, lambda b: b.status == "completed", what="completed")
    assert [s for s in OPENAI_ORDER if s in seen] == seen  # never out of order, never backwards
    assert done.metadata == {"job": "walk"} and done.model == MODEL and done.endpoint == "/v1/chat/completions"
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.expires_at
    assert batch.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.completed_at <= done.expires_at == batch.created_at + 86_400
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (6, 6, 0)
    assert done.error_file_id is None and done.output_file_id is not None


def test_openai_batch_output_lines_answer_each_request_as_online(fast: str) -> None:
    client = oai(fast)
    # On a model that OpenAI sells flex for (a batch is of one model).
    rows = [
        chat_line(f"q{i}", f"about item {i}", model=FLEX_MODEL, reasoning_effort="low", max_completion_tokens=512)
        for i in range(4)
    ]
    done = wait_status(client, submit(client, rows).id, "completed")
    lines = read_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == ["q0", "q1", "q2", "q3"]
    for line in lines:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        body = response["body"]
        asked = rows[int(line["custom_id"][1:])]["body"]
        online = client.chat.completions.create(**asked)
        # The same question online, at the standard tier and on flex with metadata: the same answer and usage.
        flex = client.chat.completions.create(**asked, service_tier="flex", metadata={"lane": "flex"}, store=False)
        assert body["object"] == "chat.completion" and body["model"] == FLEX_MODEL
        assert 0 < body["usage"]["completion_tokens"] <= 512 and body["choices"][0]["message"]["content"]
        text, usage = body["choices"][0]["message"]["content"], body["usage"]
        for other in (online, flex):
            assert other.usage is not None and other.choices[0].message.content == text
            assert (other.usage.prompt_tokens, other.usage.completion_tokens) == (
                usage["prompt_tokens"], usage["completion_tokens"])  # fmt: skip
    other_question = {**rows[0]["body"], "messages": [{"role": "user", "content": "a different question"}]}
    first = lines[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert client.chat.completions.create(**other_question).choices[0].message.content != first
    assert done.usage is not None
    assert done.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines)
    assert done.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


def test_openai_batch_puts_rejected_lines_in_the_error_file(fast: str) -> None:
    client = oai(fast)
    rows = [chat_line("good", "fine"), chat_line("hot", "too hot", temperature=5), chat_line("boom", "x [[sim:500]]")]
    done = wait_status(client, submit(client, rows).id, "completed")
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    assert [line["custom_id"] for line in read_lines(client, done.output_file_id)] == ["good"]
    errors = {line["custom_id"]: line for line in read_lines(client, done.error_file_id)}
    assert errors["hot"]["response"]["status_code"] == 400
    assert errors["hot"]["response"]["body"]["error"]["param"] == "temperature"
    assert errors["boom"]["response"]["status_code"] == 500
    charge = bills(fast, "openai")[done.id]
    assert charge["billed_lines"] == 1 and charge["answered"] == 3
    assert abs(2 * charge["cost_micros"] - charge["list_cost_micros"]) <= 1  # gpt-4o-mini's batch discount: 50%


def test_openai_batch_of_only_failed_lines_has_no_output_file(fast: str) -> None:
    client = oai(fast)
    done = wait_status(client, submit(client, [chat_line("bad", "x", temperature=9)]).id, "completed")
    assert done.output_file_id is None and done.error_file_id is not None


def test_openai_batches_list_pages_newest_first(fast: str) -> None:
    client = oai(fast)
    ids = [submit(client, [chat_line("a", f"list {i}")]).id for i in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more
    second = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in second.data] == ids[::-1][2:4]
    assert [b.id for b in client.batches.list(limit=2)][:5] == ids[::-1]


# -- OpenAI batches: failed validation and limits --------------------------------------------------------


def failed_errors(client: openai.OpenAI, data: bytes) -> list[tuple[str | None, int | None]]:
    batch = client.batches.create(
        input_file_id=upload(client, data), endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating"
    done = wait_status(client, batch.id, "failed", "in_progress", "completed")
    assert done.status == "failed" and done.failed_at is not None and done.in_progress_at is None
    assert done.errors is not None and done.errors.data
    assert done.output_file_id is None and done.error_file_id is None
    return [(e.code, e.line) for e in done.errors.data]


def test_openai_batch_fails_validation_naming_each_bad_line(fast: str) -> None:
    other_url = {**chat_line("c", "x"), "url": "/v1/responses"}
    data = b"\n".join(
        [
            json.dumps(chat_line("a", "fine")).encode(),
            b"{not json",
            json.dumps(other_url).encode(),
            json.dumps(chat_line("a", "again")).encode(),
            json.dumps(chat_line("d", "x", model="gpt-4o")).encode(),
            json.dumps({"custom_id": "e", "method": "POST", "url": "/v1/chat/completions"}).encode(),
        ]
    )
    assert failed_errors(oai(fast), data) == [
        ("invalid_json_line", 2),
        ("url_mismatch", 3),
        ("duplicate_custom_id", 4),
        ("model_mismatch", 5),
        ("missing_required_parameter", 6),
    ]


def test_openai_batch_over_the_request_limit_fails(fast: str) -> None:
    rows = [chat_line(f"r{i}", "x") for i in range(21)]
    assert failed_errors(oai(fast), jsonl(rows)) == [("too_many_tasks", None)]


def test_openai_batch_over_the_file_size_limit_fails(fast: str) -> None:
    rows = [chat_line(f"r{i}", "word " * 1200) for i in range(4)]
    assert len(jsonl(rows)) > 20_000
    assert failed_errors(oai(fast), jsonl(rows)) == [("file_too_large", None)]


def test_openai_batch_of_an_empty_file_fails(fast: str) -> None:
    assert failed_errors(oai(fast), b"\n") == [("empty_file", None)]


def test_openai_batch_create_refuses_an_unknown_file_or_endpoint(fast: str) -> None:
    client = oai(fast)
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=upload(client, jsonl([chat_line("a", "x")])),
            endpoint="/v1/embeddings",
            completion_window="24h",
        )
    assert info.value.param == "endpoint"


def test_openai_enqueued_token_limit_fails_a_batch_until_capacity_is_released(slow: str) -> None:
    client = oai(slow)
    model = "gpt-4.1-mini"  # 500 enqueued tokens allowed on this simulator
    # About 30 input tokens a line: 8 lines fit alone, 12 lines fit alone, both together do not.
    words = "count these twenty words please " * 5
    rows = [chat_line(f"t{i}", words, model=model) for i in range(12)]
    first = wait_status(client, submit(client, rows[:8]).id, "in_progress", "failed")
    assert first.status == "in_progress"
    second = wait_status(client, submit(client, rows).id, "in_progress", "failed")
    assert second.status == "failed" and second.errors is not None
    assert [e.code for e in second.errors.data] == ["token_limit_exceeded"]
    assert "Enqueued token limit" in str(second.errors.data[0].message)
    client.batches.cancel(first.id)
    wait_status(client, first.id, "cancelled")
    third = wait_status(client, submit(client, rows).id, "in_progress", "failed")
    assert third.status == "in_progress"
    client.batches.cancel(third.id)


# -- OpenAI batches: cancelled, expired, stuck -----------------------------------------------------------


def test_openai_cancel_keeps_the_lines_answered_before_it(slow: str) -> None:
    client = oai(slow)
    rows = [chat_line(f"c{i}", f"cancel me {i}") for i in range(40)]
    batch = submit(client, rows)
    running = poll(
        lambda: client.batches.retrieve(batch.id),
        lambda b: b.request_counts is not None and b.request_counts.completed >= 1,
        what="some lines answered",
    )
    assert running.status == "in_progress"
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = wait_status(client, batch.id, "cancelled")
    assert done.cancelled_at is not None and done.cancelled_at >= done.cancelling_at >= batch.created_at
    assert done.request_counts is not None
    answered = done.request_counts.completed
    assert 1 <= answered < 40
    lines = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"c{i}" for i in range(answered)]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_openai_batch_past_its_window_expires_with_partial_results(expiring: str) -> None:
    client = oai(expiring)
    rows = [chat_line(f"e{i}", f"slow {i}") for i in range(10)]
    done = wait_status(client, submit(client, rows).id, "expired")
    assert done.expired_at == done.expires_at and done.completed_at is None
    assert done.request_counts is not None
    answered = done.request_counts.completed
    assert 0 < answered < 10 and done.request_counts.failed == 10 - answered
    kept = read_lines(client, done.output_file_id)
    expired = read_lines(client, done.error_file_id)
    assert len(kept) == answered and all(line["response"]["status_code"] == 200 for line in kept)
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in expired)
    assert sorted(line["custom_id"] for line in kept + expired) == sorted(r["custom_id"] for r in rows)
    assert done.usage is not None and done.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in kept
    )
    charge = bills(expiring, "openai")[done.id]
    assert charge["billed_lines"] == answered and 0 < charge["cost_micros"] < charge["list_cost_micros"]


def test_openai_stuck_batches_stay_in_their_state_past_the_window_until_cancelled(stuck: str) -> None:
    client = oai(stuck)
    by_state: dict[str, Batch] = {}
    for i in range(30):
        batch = submit(client, [chat_line(f"s{j}", f"stuck {i} {j}") for j in range(5)])
        settled = poll(
            lambda b=batch: client.batches.retrieve(b.id),
            lambda b: provider_now(client) > b.created_at + 3600,
            what="an hour of provider time",
        )
        by_state.setdefault(settled.status, settled)
        if len(by_state) == 3:
            break
    assert set(by_state) == {"validating", "in_progress", "finalizing"}
    latest = max(b.expires_at or 0 for b in by_state.values())
    poll(lambda: provider_now(client), lambda now: now > latest + 86_400, what="a day past the window")
    for status, batch in by_state.items():
        again = client.batches.retrieve(batch.id)
        assert again.status == status and again.expired_at is None and again.completed_at is None
        assert again.request_counts is not None and batch.request_counts is not None
        assert again.request_counts.completed == batch.request_counts.completed
    frozen = by_state["in_progress"].request_counts
    assert frozen is not None and frozen.completed < frozen.total
    client.batches.cancel(by_state["in_progress"].id)
    done = wait_status(client, by_state["in_progress"].id, "cancelled")
    assert done.request_counts is not None and done.request_counts.completed == frozen.completed


def test_openai_batch_without_an_api_key_gets_401(fast: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        oai(fast).batches.list(extra_headers={"Authorization": openai.Omit()})


# -- Anthropic Message Batches ---------------------------------------------------------------------------


def message(custom_id: str, text: str, **params: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {"model": CLAUDE, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **params},
    }


def wait_ended(client: anthropic.Anthropic, batch_id: str) -> Any:
    return poll(
        lambda: client.messages.batches.retrieve(batch_id), lambda b: b.processing_status == "ended", what="ended"
    )


def test_anthropic_batch_ends_with_succeeded_and_errored_results(fast: str) -> None:
    client = claude(fast)
    requests = [message("ok-1", "hello"), message("ok_2", "there"), message("bad", "x", temperature=3)]
    batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert batch.type == "message_batch" and batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 3 and batch.request_counts.succeeded == 0
    assert (batch.expires_at - batch.created_at).total_seconds() == 86_400
    done = wait_ended(client, batch.id)
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 2, 1, 0, 0)
    assert done.ended_at is not None and done.ended_at >= done.created_at and done.results_url
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {"ok-1", "ok_2", "bad"}
    ok = results["ok-1"]
    assert ok.type == "succeeded" and ok.message.role == "assistant" and ok.message.content
    online = client.messages.create(**requests[0]["params"], metadata={"user_id": "u1"})  # type: ignore[call-overload]
    assert online.content == ok.message.content, "the same question online and in a batch gets the same answer"
    assert online.usage.output_tokens == ok.message.usage.output_tokens
    assert ok.message.usage.input_tokens > 0 and 0 < ok.message.usage.output_tokens <= 64
    assert ok.message.usage.service_tier == "batch"
    bad = results["bad"]
    assert bad.type == "errored" and bad.error.error.type == "invalid_request_error"
    charge = bills(fast, "anthropic")[batch.id]
    assert charge["billed_lines"] == 2 and abs(2 * charge["cost_micros"] - charge["list_cost_micros"]) <= 1


def test_anthropic_batch_refuses_bad_and_duplicate_custom_ids(fast: str) -> None:
    client = claude(fast)
    for custom_id in ("has space", "x" * 65, "", "dot.id"):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.create(requests=[message(custom_id, "x")])  # type: ignore[list-item]
    assert client.messages.batches.create(requests=[message("x" * 64, "x")])  # type: ignore[list-item]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.batches.create(requests=[message("same", "a"), message("same", "b")])  # type: ignore[list-item]
    assert "Duplicate" in info.value.message


def test_anthropic_batch_limits_requests_and_bytes(fast: str) -> None:
    client = claude(fast)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[message(f"r{i}", "x") for i in range(21)])  # type: ignore[misc]
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.batches.create(requests=[message(f"r{i}", "word " * 1200) for i in range(4)])  # type: ignore[misc]
    assert info.value.status_code == 413


def test_anthropic_batch_results_are_refused_until_it_ends(slow: str) -> None:
    client = claude(slow)
    batch = client.messages.batches.create(requests=[message(f"w{i}", "wait") for i in range(40)])  # type: ignore[misc]
    with pytest.raises(anthropic.AnthropicError):
        client.messages.batches.results(batch.id)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch.id)
    client.messages.batches.cancel(batch.id)


def test_anthropic_cancel_marks_unanswered_requests_canceled(slow: str) -> None:
    client = claude(slow)
    batch = client.messages.batches.create(requests=[message(f"c{i}", f"cancel {i}") for i in range(40)])  # type: ignore[misc]
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    assert canceling.request_counts.processing == 40
    done = wait_ended(client, batch.id)
    assert done.request_counts.canceled + done.request_counts.succeeded == 40 and done.request_counts.canceled > 0
    results = list(client.messages.batches.results(batch.id))
    assert sum(r.result.type == "canceled" for r in results) == done.request_counts.canceled


def test_anthropic_batch_past_its_window_expires_with_partial_results(expiring: str) -> None:
    client = claude(expiring)
    batch = client.messages.batches.create(requests=[message(f"e{i}", f"slow {i}") for i in range(10)])  # type: ignore[misc]
    done = wait_ended(client, batch.id)
    counts = done.request_counts
    assert 0 < counts.succeeded < 10 and counts.expired == 10 - counts.succeeded
    assert done.ended_at == done.expires_at
    kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert kinds.count("succeeded") == counts.succeeded and kinds.count("expired") == counts.expired


def test_anthropic_stuck_batch_stays_in_progress_past_its_window(stuck: str) -> None:
    client = claude(stuck)
    batch = client.messages.batches.create(requests=[message("s1", "stuck")])  # type: ignore[list-item]
    clock = oai(stuck)
    deadline = int(batch.expires_at.timestamp()) + 86_400
    poll(lambda: provider_now(clock), lambda now: now > deadline, what="a day past the window")
    again = client.messages.batches.retrieve(batch.id)
    assert again.processing_status == "in_progress" and again.ended_at is None
    client.messages.batches.cancel(batch.id)
    assert wait_ended(client, batch.id).ended_at is not None


def test_anthropic_batches_list_pages_and_delete(fast: str) -> None:
    client = claude(fast)
    ids = [client.messages.batches.create(requests=[message("a", f"p{i}")]).id for i in range(5)]  # type: ignore[list-item]
    newest = ids[::-1]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2] and page.has_more
    assert page.first_id == newest[0] and page.last_id == newest[1]
    after = client.messages.batches.list(limit=2, after_id=newest[1])
    assert [b.id for b in after.data] == newest[2:4]
    before = client.messages.batches.list(limit=2, before_id=newest[2])
    assert [b.id for b in before.data] == newest[:2]
    assert [b.id for b in client.messages.batches.list(limit=2)][:5] == newest
    wait_ended(client, ids[0])
    deleted = client.messages.batches.delete(ids[0])
    assert deleted.id == ids[0] and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(ids[0])


def test_anthropic_batch_without_an_api_key_gets_401(fast: str) -> None:
    client = anthropic.Anthropic(base_url=fast.removesuffix("/v1"), api_key="k", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.batches.list(extra_headers={"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()})
