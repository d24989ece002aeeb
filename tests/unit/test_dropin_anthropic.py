"""Anthropic's Message Batch requests as BatchRouter manifest lines, and chat answers as Anthropic Messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchrouter.core.durations import ASAP
from batchrouter.core.errors import InvalidRequest
from batchrouter.core.paging import page
from batchrouter.dropin.anthropic import deadline_option
from batchrouter.dropin.anthropic_lines import errored, manifest, message


def one(custom_id: str = "r-1", **params: Any) -> dict[str, Any]:
    base = {"model": "claude-haiku-5-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    return {"custom_id": custom_id, "params": {**base, **params}}


def lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_a_request_becomes_a_chat_completions_line_with_system_first_and_stop_renamed() -> None:
    [line] = lines(manifest([one(system=[{"type": "text", "text": "Be brief."}], stop_sequences=["END"],
                                 metadata={"user_id": "u-7"}, temperature=0.2)]))  # fmt: skip
    assert (line["custom_id"], line["url"]) == ("r-1", "/v1/chat/completions")
    body = line["body"]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (body["stop"], body["user"], body["temperature"], body["max_tokens"]) == (["END"], "u-7", 0.2, 10)


def test_image_blocks_become_image_url_parts() -> None:
    content = [{"type": "text", "text": "What is it?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]  # fmt: skip
    [line] = lines(manifest([one(messages=[{"role": "user", "content": content}])]))
    parts = line["body"]["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_the_same_requests_make_the_same_manifest_bytes() -> None:
    assert manifest([one("a"), one("b")]) == manifest([one("a"), one("b")])


@pytest.mark.parametrize("custom_id", ["", "x" * 65, "has space", "dot.ted", 7])
def test_a_custom_id_outside_anthropics_rules_is_refused_naming_the_index(custom_id: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"requests\[1\].*custom_id"):
        manifest([one("fine"), one(custom_id)])


def test_a_repeated_custom_id_names_both_requests() -> None:
    with pytest.raises(InvalidRequest, match=r"requests\[2\].*requests\[0\].*unique"):
        manifest([one("a"), one("b"), one("a")])


def test_a_missing_param_and_an_unknown_param_are_named() -> None:
    with pytest.raises(InvalidRequest, match=r"requests\[0\] \(custom_id 'r-1'\)\.params: max_tokens missing"):
        manifest([{"custom_id": "r-1", "params": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}])
    with pytest.raises(InvalidRequest, match=r"params\.top_k: not a param"):
        manifest([one(top_k=5)])
    with pytest.raises(InvalidRequest, match="stream"):
        manifest([one(stream=True)])


def test_a_chat_completion_becomes_a_message_with_usage_and_stop_reason() -> None:
    answer = {"role": "assistant", "content": "Red"}
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}
    chat = {"id": "chatcmpl-1", "model": "gpt-4o-mini", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "length", "message": answer}]}  # fmt: skip
    said = message(chat)
    assert (said["type"], said["role"], said["model"]) == ("message", "assistant", "gpt-4o-mini")
    assert said["stop_reason"] == "max_tokens"
    assert said["content"] == [{"type": "text", "text": "Red", "citations": None}]
    assert said["usage"] == {"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 2,
                             "cache_creation_input_tokens": 0}  # fmt: skip


def test_tool_calls_become_tool_use_blocks() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    answer = {"content": None, "tool_calls": [call]}
    chat = {"id": "c", "model": "m", "usage": {}, "choices": [{"finish_reason": "tool_calls", "message": answer}]}
    said = message(chat)
    assert said["stop_reason"] == "tool_use"
    assert said["content"] == [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]


def test_an_errored_result_has_anthropics_error_envelope() -> None:
    assert errored("api_error", "boom") == {"type": "errored",
                                            "error": {"type": "error", "error": {"type": "api_error",
                                                                                 "message": "boom"}}}  # fmt: skip


def test_the_deadline_option_defaults_to_24_hours_and_takes_asap() -> None:
    assert deadline_option(None) == 24 * 3600
    assert deadline_option("asap") == ASAP  # online at once, whatever the workspace's default
    assert deadline_option("4h") == 4 * 3600


def test_before_pages_back_to_the_items_just_before() -> None:
    items = ["e", "d", "c", "b", "a"]
    back = page(items, key=str, after=None, before="b", limit=2)
    assert (back.items, back.has_more) == (["d", "c"], True)
    assert page(items, key=str, after=None, before="c", limit=5).items == ["e", "d"]


def test_tools_and_tool_choice_become_functions_and_openais_choice() -> None:
    tool = {"name": "weather", "description": "The weather", "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"}}  # fmt: skip
    for choice, expected in [({"type": "any"}, "required"), ({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
                             ({"type": "tool", "name": "weather"}, {"type": "function",
                                                                    "function": {"name": "weather"}})]:  # fmt: skip
        [line] = lines(manifest([one(tools=[tool], tool_choice=choice)]))
        assert line["body"]["tool_choice"] == expected
        assert line["body"]["tools"] == [{"type": "function", "function": {
            "name": "weather", "description": "The weather", "parameters": {"type": "object"}}}]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "param"),
    [({"max_tokens": "10"}, "requests[0].params.max_tokens"), ({"max_tokens": True}, "requests[0].params.max_tokens"),
     ({"temperature": float("nan")}, "requests[0].params.temperature"),
     ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
      "requests[0].params.messages[0].content[0].text"),
     ({"messages": [{"role": "user", "content": [{"type": "image", "source": "abc"}]}]},
      "requests[0].params.messages[0].content[0].source"),
     ({"system": [{"type": "image", "source": {"type": "url", "url": "u"}}]}, "requests[0].params.system[0].type"),
     ({"tools": [{"name": "w"}, 7]}, "requests[0].params.tools[1]"),
     ({"tool_choice": "auto"}, "requests[0].params.tool_choice"),
     ({"metadata": {"user_id": 7}}, "requests[0].params.metadata.user_id"),
     ({"metadata": {"user": "u"}}, "requests[0].params.metadata.user")],
)  # fmt: skip
def test_a_value_of_the_wrong_type_is_refused_naming_its_path(params: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        manifest([one(**params)])
    assert refused.value.param == param
    assert str(refused.value).startswith("requests[0] (custom_id 'r-1').params.")
