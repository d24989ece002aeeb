"""The OpenAI drop-in's shapes agree with the installed official SDK's types, and its rules hold."""

from __future__ import annotations

import typing

import openai.types
import pytest

from batchrouter.api.errors import error_type
from batchrouter.batches.deletion import delete_workspace_data
from batchrouter.batches.states import BatchState
from batchrouter.core.config import Settings
from batchrouter.core.errors import InvalidRequest, NotFound
from batchrouter.core.paging import page
from batchrouter.dropin.openai import STATUS, OpenAIBatch
from batchrouter.engine import BatchRouter
from batchrouter.output.files import FileObject, expiry


def test_every_batch_state_has_an_openai_status_the_sdk_knows() -> None:
    sdk_statuses = set(typing.get_args(openai.types.Batch.model_fields["status"].annotation))
    assert set(STATUS) == set(BatchState)
    assert set(STATUS.values()) <= sdk_statuses


@pytest.mark.parametrize(("ours", "theirs"), [(OpenAIBatch, openai.types.Batch), (FileObject, openai.types.FileObject)])
def test_the_objects_have_every_field_of_the_sdks_type(ours: type, theirs: type) -> None:
    assert set(theirs.model_fields) <= set(ours.model_fields)


def test_a_page_follows_its_cursor_and_says_whether_more_follow() -> None:
    items = ["a", "b", "c", "d", "e"]
    first = page(items, key=str, after=None, limit=2)
    assert (first.items, first.has_more) == (["a", "b"], True)
    last = page(items, key=str, after="d", limit=2)
    assert (last.items, last.has_more) == (["e"], False)
    with pytest.raises(InvalidRequest) as refused:
        page(items, key=str, after="zz", limit=2)
    assert refused.value.param == "after"


def test_file_expiry_is_within_openais_bounds() -> None:
    assert expiry(100, anchor=None, seconds=None) is None
    assert expiry(100, anchor="created_at", seconds=3600) == 3700
    for anchor, seconds in (("created_at", 59), ("created_at", 31 * 24 * 3600), ("last_active_at", 3600)):
        with pytest.raises(InvalidRequest):
            expiry(100, anchor=anchor, seconds=seconds)


def test_error_types_are_openais() -> None:
    assert error_type(402, "insufficient_credits") == error_type(429, "insufficient_credits") == "insufficient_quota"
    assert [error_type(s, "x") for s in (400, 401, 403, 404, 429, 500)] == [
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error", "rate_limit_error",
        "server_error"]  # fmt: skip


def test_files_stay_in_their_workspace_and_go_with_its_data(settings: Settings) -> None:
    engine = BatchRouter(settings)
    data = b'{"custom_id": "1"}\n'
    kept = engine.files.create(data, workspace="acme", filename="../../etc/in.jsonl", purpose="batch")
    assert kept.filename == "in.jsonl" and engine.files.content(kept.id, workspace="acme") == data
    with pytest.raises(NotFound):
        engine.files.get(kept.id, workspace="globex")
    assert [f.id for f in engine.files.list("acme").items] == [kept.id]
    report = delete_workspace_data(engine.storage, settings, "acme", actor="test")
    assert any(url.endswith("files/acme") for url in report["deleted"])
    with pytest.raises(NotFound):
        engine.files.get(kept.id, workspace="acme")


@pytest.mark.parametrize(("lane", "tier"), [("flex", "flex"), ("priority", "priority"), ("online", "default"),
                                            ("batch", "default"), (None, "default")])  # fmt: skip
def test_a_completion_line_reports_the_tier_its_lane_answered_at_and_parses_in_the_sdk(lane: str | None,
                                                                                       tier: str) -> None:  # fmt: skip
    from batchrouter.dropin.openai_lines import chat_completion

    row = {"batch_id": "b", "row": 0, "model": "gpt-5-mini", "lane": lane, "output_text": "hi", "input_tokens": 3,
           "output_tokens": 1, "cached_tokens": 0, "finished_at": None}  # fmt: skip
    body = chat_completion(row)
    assert body["service_tier"] == tier
    assert openai.types.chat.ChatCompletion.model_validate(body).service_tier == tier
