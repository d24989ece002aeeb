"""OpenAI's Batch API on `batchrouter serve`, driven only through the official `openai` SDK.

The real app under uvicorn on loopback, the inline executor, providers on the built-in simulator:
upload, create, poll, list with pagination, cancel, output and error files, a batch answered by two
providers, a create retried as the SDK retries it, other workspaces refused, short credit refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from dropin_sdk import ASAP, RUN_DEADLINE_S, USD, Server, jsonl, key_for, lines, request, start_api, wait_done

from batchrouter.access.accounts import Accounts
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REALFILES = ROOT.parent / "shared" / "realfiles"

TWO_PROVIDERS = jsonl([
    request("a-1", "gpt-4o-mini", "Say this is a test."),
    request("a-2", "claude-haiku-5-5", "Name a colour."),
    request("a-3", "gpt-4o-mini", "Count to three."),
    request("a-4", "no-such-model-9", "This line names a model nobody has."),
])  # fmt: skip


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from start_api(monkeypatch)


# -- the whole round trip ----------------------------------------------------------------------------
def test_a_batch_file_runs_through_the_sdk_on_two_providers_with_an_error_line(api: Server) -> None:
    client = api.client()
    uploaded = client.files.create(file=("requests.jsonl", TWO_PROVIDERS), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file", "batch", len(TWO_PROVIDERS), "requests.jsonl")  # fmt: skip
    assert client.files.content(uploaded.id).read() == TWO_PROVIDERS

    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"job": "nightly", **ASAP})  # fmt: skip
    assert (batch.object, batch.input_file_id, batch.endpoint, batch.completion_window) == (
        "batch", uploaded.id, "/v1/chat/completions", "24h")  # fmt: skip
    assert batch.status in ("validating", "in_progress", "finalizing", "completed")
    assert batch.metadata == {"job": "nightly", **ASAP}
    assert batch.expires_at == batch.created_at + 24 * 3600

    done = wait_done(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)
    assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    assert done.completed_at is not None and done.in_progress_at is not None
    assert done.errors is not None and [(e.line, e.param) for e in done.errors.data] == [(4, "model")]

    assert done.output_file_id is not None and done.error_file_id is not None
    output = lines(client.files.content(done.output_file_id).read())
    assert sorted(line["custom_id"] for line in output) == ["a-1", "a-2", "a-3"]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    providers = {line["custom_id"]: line["batchrouter"]["provider"] for line in output}
    assert providers["a-1"] != providers["a-2"], providers  # two providers answered, one file
    errors = lines(client.files.content(done.error_file_id).read())
    assert [(e["custom_id"], e["response"]) for e in errors] == [("a-4", None)]
    assert "line 4" in errors[0]["error"]["message"]

    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"
    listed = [f.id for f in client.files.list()]
    assert {uploaded.id, done.output_file_id, done.error_file_id} <= set(listed)


def test_responses_lines_answer_with_response_objects(api: Server) -> None:
    client = api.client()
    data = jsonl([request("r-1", "gpt-4o-mini", "Say hi.", url="/v1/responses")])
    uploaded = client.files.create(file=("r.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h",
                                  metadata=ASAP)  # fmt: skip
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None and done.error_file_id is None
    [line] = lines(client.files.content(done.output_file_id).read())
    body = line["response"]["body"]
    assert body["object"] == "response" and body["output"][0]["content"][0]["text"]


# -- retries, lists, cancel ----------------------------------------------------------------------------
def test_a_create_the_sdk_retries_makes_one_batch_and_one_reservation(api: Server) -> None:
    client = api.client()
    uploaded = client.files.create(file=("retry.jsonl", TWO_PROVIDERS), purpose="batch")
    # The first answer is lost (the client gave up waiting): the SDK sends the same POST again.
    first = client.with_options(max_retries=0).batches.with_raw_response.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=ASAP
    )
    again = client.batches.with_raw_response.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                    completion_window="24h", metadata=ASAP,
                                                    extra_headers={"x-stainless-retry-count": "1"})  # fmt: skip
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.parse().id == again.parse().id
    holds = Ledger(api.settings.database).batch_holds(first.parse().id)
    assert len(holds) == 1
    assert [b.id for b in client.batches.list()] == [first.parse().id]


def test_batches_list_pages_newest_first_with_after_and_has_more(api: Server) -> None:
    client = api.client()
    made = []
    for n in range(3):
        data = jsonl([request(f"p-{n}", "gpt-4o-mini", f"Say {n}.")])
        uploaded = client.files.create(file=(f"p{n}.jsonl", data), purpose="batch")
        made.append(client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h", metadata=ASAP).id)  # fmt: skip
    first = client.batches.list(limit=2)
    assert first.has_more is True and len(first.data) == 2
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.has_more is False and len(second.data) == 1
    assert sorted(b.id for b in [*first.data, *second.data]) == sorted(made)
    assert [b.id for b in client.batches.list(limit=1)] == [b.id for b in client.batches.list()]  # auto-paging
    for batch_id in made:
        wait_done(client, batch_id)


def test_a_cancelled_batch_ends_cancelled(api: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client = api.client()
    uploaded = client.files.create(file=("c.jsonl", TWO_PROVIDERS), purpose="batch")
    # A 24h window puts the items on the providers' batch lane: the batch waits there until cancelled.
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_done(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None, (done.model_extra or {}).get("state")
    assert done.request_counts is not None and done.request_counts.total == 4


# -- refusals ----------------------------------------------------------------------------------------
def test_another_workspace_gets_404_for_the_file_and_the_batch(api: Server) -> None:
    client, other = api.client(), api.client(api.other_key)
    uploaded = client.files.create(file=("mine.jsonl", TWO_PROVIDERS), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata=ASAP)  # fmt: skip
    for call in (lambda: other.files.retrieve(uploaded.id), lambda: other.files.content(uploaded.id),
                 lambda: other.files.delete(uploaded.id), lambda: other.batches.retrieve(batch.id),
                 lambda: other.batches.cancel(batch.id),
                 lambda: other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call()
    assert [f.id for f in other.files.list()] == [] and [b.id for b in other.batches.list()] == []
    wait_done(client, batch.id)


def test_short_credit_is_refused_saying_how_much_is_missing(api: Server) -> None:
    Ledger(api.settings.database).grant("poor", 1, key="grant-poor")
    client = api.client(key_for(Accounts(api.settings.database), "poor"))
    uploaded = client.files.create(file=("big.jsonl", TWO_PROVIDERS), purpose="batch")
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.status_code == 429
    assert (refused.value.code, refused.value.type) == ("insufficient_credits", "insufficient_quota")
    assert "missing" in refused.value.message and "$0." in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"


def test_a_quote_over_the_approval_limit_waits_and_goes_on_once_approved(api: Server) -> None:
    from batchrouter.access.actors import CLI
    from batchrouter.engine import BatchRouter

    Ledger(api.settings.database).grant("cautious", 5 * USD, key="grant-cautious")
    client = api.client(key_for(Accounts(api.settings.database), "cautious"))
    uploaded = client.files.create(file=("gated.jsonl", TWO_PROVIDERS), purpose="batch")
    create = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
              "metadata": ASAP}  # fmt: skip
    with pytest.raises(openai.ConflictError) as refused:
        client.batches.create(**create)  # type: ignore[arg-type]
    assert refused.value.code == "awaiting_approval"
    assert refused.value.response.headers["x-should-retry"] == "false"
    [waiting] = client.batches.list().data
    assert (waiting.status, (waiting.model_extra or {})["state"]) == ("validating", "awaiting_approval")
    assert waiting.id in refused.value.message
    assert Ledger(api.settings.database).batch_holds(waiting.id) == []
    BatchRouter(api.settings).batches.approve(waiting.id, actor=CLI)
    again = client.batches.create(**create)  # type: ignore[arg-type]
    assert again.id == waiting.id
    assert wait_done(client, again.id).status == "completed"


def test_a_bad_request_names_its_param(api: Server) -> None:
    client = api.client()
    uploaded = client.files.create(file=("x.jsonl", TWO_PROVIDERS), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    assert refused.value.param == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-000000000000000000000000", endpoint="/v1/chat/completions",
                              completion_window="24h")  # fmt: skip


def test_a_file_can_be_deleted_and_expires(api: Server) -> None:
    client = api.client()
    uploaded = client.files.create(file=("d.jsonl", TWO_PROVIDERS), purpose="batch",
                                   expires_after={"anchor": "created_at", "seconds": 3600})  # fmt: skip
    assert uploaded.expires_at == uploaded.created_at + 3600
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


# -- the README's example: an unchanged OpenAI batch script on a real file, the 24h window honoured ------------
@pytest.fixture
def fast_clock_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The server with the providers' batch clock (and the lanes' deadlines) running 1440x: 24h in a minute."""
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__BATCH_TIME_SCALE", "1440")
    monkeypatch.setenv("BATCHROUTER_LANES__TIME_SCALE", "1440")
    yield from start_api(monkeypatch)


@pytest.mark.skipif(not REALFILES.is_dir(), reason="the real batch files are not on this machine")
def test_the_readme_example_runs_a_real_batch_file_unchanged(fast_clock_api: Server) -> None:
    path = REALFILES / "zgimszhd61_batchinput.jsonl"
    env = {**os.environ, "BATCHROUTER_BASE_URL": f"{fast_clock_api.url}/v1", "BATCHROUTER_API_KEY": fast_clock_api.key,
           "POLL_S": "0.5"}  # fmt: skip
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "openai_batch.py"), str(path)], env=env,
                          capture_output=True, text=True, timeout=RUN_DEADLINE_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = lines(done.stdout.encode())
    expected = [json.loads(line)["custom_id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert sorted(line["custom_id"] for line in out) == sorted(expected)
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] for line in out)
