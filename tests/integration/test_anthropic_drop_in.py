"""Anthropic's Message Batches API on `batchrouter serve`, driven only through the official `anthropic` SDK.

The real app under uvicorn on loopback, the inline executor, providers on the built-in simulator:
create, poll, list with pagination, cancel, results (succeeded and errored), delete, a batch
answered by two providers, a create retried as the SDK retries it, other workspaces refused, short
credit refused, a missing or bad key refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import Anthropic
from dropin_sdk import Server, key_for, start_api

from batchrouter.access.accounts import Accounts
from batchrouter.money.ledger import Ledger

pytestmark = pytest.mark.integration

RUN_DEADLINE_S = 240.0
ASAP = {"x-batchrouter-deadline": "asap"}  # every item online at once: the test does not wait on provider batches


def request(custom_id: str, model: str, text: str) -> dict[str, Any]:
    return {"custom_id": custom_id,
            "params": {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}}  # fmt: skip


TWO_PROVIDERS = [
    request("a-1", "claude-haiku-5-5", "Name a colour."),
    request("a-2", "gpt-4o-mini", "Say this is a test."),
    request("a-3", "no-such-model-9", "This request names a model nobody has."),
]


def client(api: Server, key: str | None = None, **options: Any) -> Anthropic:
    return Anthropic(base_url=api.url, api_key=key or api.key, **options)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from start_api(monkeypatch)


def wait_ended(sdk: Anthropic, batch_id: str) -> Any:
    deadline = time.monotonic() + RUN_DEADLINE_S
    while True:
        batch = sdk.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} is still {batch.processing_status} after the deadline"
        time.sleep(0.2)  # poll interval


def test_a_batch_runs_on_two_providers_and_answers_in_anthropics_shapes(api: Server) -> None:
    sdk = client(api)
    batch = sdk.messages.batches.create(requests=TWO_PROVIDERS, extra_headers=ASAP)  # type: ignore[arg-type]
    assert batch.type == "message_batch" and batch.processing_status in ("in_progress", "ended")
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    done = wait_ended(sdk, batch.id)
    assert done.processing_status == "ended" and done.ended_at is not None
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 2, 1, 0, 0)
    assert done.results_url == f"{api.url}/v1/messages/batches/{batch.id}/results"
    results = {r.custom_id: r for r in sdk.messages.batches.results(batch.id)}
    assert sorted(results) == ["a-1", "a-2", "a-3"]
    for custom_id in ("a-1", "a-2"):
        result = results[custom_id].result
        assert result.type == "succeeded"
        message = result.message
        assert message.type == "message" and message.role == "assistant"
        assert message.content[0].type == "text" and message.content[0].text
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    failed = results["a-3"].result
    assert failed.type == "errored" and failed.error.error.type == "invalid_request_error"
    providers = {c: (r.model_extra or {})["batchrouter"]["provider"] for c, r in results.items() if c != "a-3"}
    assert providers["a-1"] != providers["a-2"], providers  # two providers answered, one results file


def test_a_create_the_sdk_retries_makes_one_batch_and_one_reservation(api: Server) -> None:
    sdk = client(api)
    first = sdk.messages.batches.create(requests=TWO_PROVIDERS, extra_headers=ASAP)  # type: ignore[arg-type]
    again = sdk.messages.batches.create(requests=TWO_PROVIDERS,  # type: ignore[arg-type]
                                        extra_headers={**ASAP, "x-stainless-retry-count": "1"})  # fmt: skip
    assert first.id == again.id
    assert len(Ledger(api.settings.database).batch_holds(first.id)) == 1
    assert [b.id for b in sdk.messages.batches.list()] == [first.id]
    wait_ended(sdk, first.id)


def test_list_pages_newest_first_with_after_id_and_before_id(api: Server) -> None:
    sdk = client(api)
    made = [sdk.messages.batches.create(requests=[request(f"p-{n}", "gpt-4o-mini", f"Say {n}.")],
                                        extra_headers=ASAP).id for n in range(3)]  # fmt: skip
    first = sdk.messages.batches.list(limit=2)
    assert first.has_more is True and len(first.data) == 2 and first.last_id == first.data[-1].id
    second = sdk.messages.batches.list(limit=2, after_id=first.data[-1].id)
    assert second.has_more is False and len(second.data) == 1
    assert sorted(b.id for b in [*first.data, *second.data]) == sorted(made)
    back = sdk.messages.batches.list(limit=2, before_id=second.data[0].id)
    assert [b.id for b in back.data] == [b.id for b in first.data]
    assert [b.id for b in sdk.messages.batches.list(limit=1)] == [b.id for b in sdk.messages.batches.list()]
    for batch_id in made:
        wait_ended(sdk, batch_id)


def test_every_page_holds_exactly_the_batches_described_one_by_one_newest_first_without_deleted_ones(
    api: Server,
) -> None:
    sdk, other = client(api), client(api, api.other_key)
    made = [sdk.messages.batches.create(requests=[request(f"q-{n}", "gpt-4o-mini", f"Say {n}.")],
                                        extra_headers=ASAP).id for n in range(6)]  # fmt: skip
    other.messages.batches.create(requests=[request("g-1", "gpt-4o-mini", "Hi.")], extra_headers=ASAP)
    for batch_id in made:
        wait_ended(sdk, batch_id)  # ended batches: each description stays the same from page to page
    for gone in (made[2], made[5]):  # one in the middle, and the newest
        sdk.messages.batches.delete(gone)
    headers = {"x-api-key": api.key, "anthropic-version": "2023-06-01"}

    def get(path: str, **query: Any) -> Any:
        answer = httpx.get(f"{api.url}/v1/messages/batches{path}", params=query, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    # What every page must hold: each batch as its own retrieve describes it, newest first.
    described = sorted((get(f"/{b}") for b in made if b not in (made[2], made[5])),
                       key=lambda b: (b["submitted_at"], b["id"]), reverse=True)  # fmt: skip
    ids = [b["id"] for b in described]
    for limit in (1, 2, 3, 20):
        forward, after = [], None
        while True:
            found = get("", limit=limit, **({"after_id": after} if after else {}))
            start = ids.index(after) + 1 if after else 0
            assert found["data"] == described[start : start + limit]
            assert (found["first_id"], found["last_id"]) == (found["data"][0]["id"], found["data"][-1]["id"])
            assert found["has_more"] is (start + limit < len(ids))
            forward.append(found)
            if not found["has_more"]:
                break
            after = found["last_id"]
        assert [b["id"] for page in forward for b in page["data"]] == ids
        before = forward[-1]["first_id"]
        while before != ids[0]:
            found = get("", limit=limit, before_id=before)
            end = ids.index(before)
            assert found["data"] == described[max(0, end - limit) : end]
            assert found["has_more"] is (end - limit > 0)
            before = found["first_id"]
    refused = httpx.get(f"{api.url}/v1/messages/batches", params={"after_id": made[2]}, headers=headers, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "after_id"  # a deleted batch's id


def test_a_canceled_batch_ends_with_canceled_results_and_can_then_be_deleted(api: Server) -> None:
    sdk = client(api)
    # The default 24h deadline puts the items on the providers' batch lane: the batch waits there until cancelled.
    batch = sdk.messages.batches.create(requests=TWO_PROVIDERS)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError) as early:
        sdk.messages.batches.delete(batch.id)
    assert "cancel" in early.value.message
    canceling = sdk.messages.batches.cancel(batch.id)
    assert canceling.processing_status in ("canceling", "ended") and canceling.cancel_initiated_at is not None
    done = wait_ended(sdk, batch.id)
    assert done.processing_status == "ended", (done.model_extra or {}).get("state")
    assert done.request_counts.canceled + done.request_counts.errored == 3
    results = list(sdk.messages.batches.results(batch.id))
    assert {r.result.type for r in results} <= {"canceled", "errored"} and len(results) == 3
    deleted = sdk.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.batches.retrieve(batch.id)
    assert [b.id for b in sdk.messages.batches.list()] == []


# -- refusals ----------------------------------------------------------------------------------------
def test_another_workspace_gets_not_found(api: Server) -> None:
    sdk, other = client(api), client(api, api.other_key)
    batch = sdk.messages.batches.create(requests=TWO_PROVIDERS, extra_headers=ASAP)  # type: ignore[arg-type]
    for call in (lambda: other.messages.batches.retrieve(batch.id), lambda: other.messages.batches.cancel(batch.id),
                 lambda: other.messages.batches.delete(batch.id),
                 lambda: list(other.messages.batches.results(batch.id))):  # fmt: skip
        with pytest.raises(anthropic.NotFoundError) as refused:
            call()
        assert refused.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert [b.id for b in other.messages.batches.list()] == []
    wait_ended(sdk, batch.id)


def test_short_credit_is_refused_saying_how_much_is_missing(api: Server) -> None:
    Ledger(api.settings.database).grant("poor", 1, key="grant-poor")
    sdk = client(api, key_for(Accounts(api.settings.database), "poor"))
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.batches.create(requests=TWO_PROVIDERS)  # type: ignore[arg-type]
    body: Any = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "insufficient_credits"
    assert "missing" in body["error"]["message"] and "$0." in body["error"]["message"]


def test_a_missing_or_bad_key_is_refused_with_401(api: Server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as refused:
        client(api, "br_nope_nope").messages.batches.list()
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    answer = httpx.get(f"{api.url}/v1/messages/batches", headers={"anthropic-version": "2023-06-01"})
    assert answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"


def test_a_missing_anthropic_version_header_is_a_400(api: Server) -> None:
    answer = httpx.get(f"{api.url}/v1/messages/batches", headers={"x-api-key": api.key})
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and "anthropic-version" in answer.json()["error"]["message"]


def test_a_bad_request_names_its_index_and_custom_id(api: Server) -> None:
    sdk = client(api)
    bad = [request("ok-1", "gpt-4o-mini", "Hi."), {"custom_id": "bad id!", "params": {}}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.batches.create(requests=bad)  # type: ignore[arg-type]
    assert "requests[1]" in refused.value.message and "custom_id" in refused.value.message
    twice = [request("same", "gpt-4o-mini", "Hi."), request("same", "gpt-4o-mini", "Ho.")]
    with pytest.raises(anthropic.BadRequestError) as duplicate:
        sdk.messages.batches.create(requests=twice)  # type: ignore[arg-type]
    assert "requests[1]" in duplicate.value.message and "unique" in duplicate.value.message


def test_a_quote_over_the_approval_limit_waits_and_goes_on_once_approved(api: Server) -> None:
    from batchrouter.access.actors import CLI
    from batchrouter.engine import BatchRouter

    Ledger(api.settings.database).grant("cautious", 5 * 1_000_000, key="grant-cautious")
    sdk = client(api, key_for(Accounts(api.settings.database), "cautious"))
    with pytest.raises(anthropic.ConflictError) as refused:
        sdk.messages.batches.create(requests=TWO_PROVIDERS, extra_headers=ASAP)  # type: ignore[arg-type]
    body: Any = refused.value.body
    assert body["error"]["code"] == "awaiting_approval"
    [waiting] = sdk.messages.batches.list().data
    assert waiting.processing_status == "in_progress" and waiting.id in body["error"]["message"]
    assert Ledger(api.settings.database).batch_holds(waiting.id) == []
    BatchRouter(api.settings).batches.approve(waiting.id, actor=CLI)
    again = sdk.messages.batches.create(requests=TWO_PROVIDERS, extra_headers=ASAP)  # type: ignore[arg-type]
    assert again.id == waiting.id
    assert wait_ended(sdk, again.id).request_counts.succeeded == 2


@pytest.fixture
def fast_clock_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The server with the providers' batch clock (and the lanes' deadlines) running 1440x: 24h in a minute."""
    monkeypatch.setenv("BATCHROUTER_SIMULATOR__BATCH_TIME_SCALE", "1440")
    monkeypatch.setenv("BATCHROUTER_LANES__TIME_SCALE", "1440")
    yield from start_api(monkeypatch)


def test_the_default_24h_window_runs_on_the_providers_batch_lanes(fast_clock_api: Server) -> None:
    sdk = client(fast_clock_api)
    batch = sdk.messages.batches.create(requests=TWO_PROVIDERS[:2])  # type: ignore[arg-type]
    done = wait_ended(sdk, batch.id)
    assert done.processing_status == "ended" and done.request_counts.succeeded == 2, (done.model_extra or {})["state"]
    results = list(sdk.messages.batches.results(batch.id))
    assert {r.result.type for r in results} == {"succeeded"}
    quote = (done.model_extra or {})["quote"]
    assert quote["deadline_s"] == 24 * 3600
    assert {lane["lane"] for lane in quote["by_lane"]} == {"batch"}  # each route took its cheapest lane: the batch API
