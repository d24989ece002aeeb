"""Provider adapters: request bodies and headers per wire format, response parsing, error classification."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from batchrouter.core.config import ProviderConfig, RoutePolicy
from batchrouter.core.errors import RateLimitedError, TerminalError, TransientError
from batchrouter.execution.providers import (
    SIMULATOR_KEY,
    AnthropicAdapter,
    OpenAIAdapter,
    OpenAICompatibleAdapter,
    OpenRouterAdapter,
    RefusedError,
    RequestItem,
    adapter_for,
)
from batchrouter.execution.providers.base import classify, retry_after_seconds

ITEM = RequestItem(
    "item-1",
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise: the quick brown fox."},
    ],
    max_tokens=64,
    temperature=0.3,
    params={"top_p": 0.9},
)


def openai_adapter() -> OpenAIAdapter:
    return OpenAIAdapter("openai", ProviderConfig(kind="openai"), api_key="sk-test")


def anthropic_adapter() -> AnthropicAdapter:
    return AnthropicAdapter("anthropic", ProviderConfig(kind="anthropic"), api_key="ak-test")


def body_of(prepared: Any) -> dict[str, Any]:
    return dict(json.loads(prepared.body))


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers({k.replace("_", "-"): v for k, v in values.items()})


def openai_body(**usage: Any) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "stop"}],
            "usage": usage,
        }
    ).encode()


def anthropic_body(stop_reason: str = "end_turn", **usage: Any) -> bytes:
    return json.dumps(
        {
            "id": "msg_abc",
            "type": "message",
            "role": "assistant",
            "content": []
            if stop_reason == "refusal"
            else [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}],
            "stop_reason": stop_reason,
            "usage": usage,
        }
    ).encode()


# -- building requests ------------------------------------------------------------------------------


def test_openai_request_sends_max_completion_tokens_and_bearer_key() -> None:
    prepared = openai_adapter().build(ITEM, "gpt-4o-mini")
    body = body_of(prepared)
    assert prepared.url == "https://api.openai.com/v1/chat/completions"
    assert prepared.headers["authorization"] == "Bearer sk-test"
    assert prepared.headers["content-type"] == "application/json"
    assert body["model"] == "gpt-4o-mini"
    assert body["max_completion_tokens"] == 64
    assert "max_tokens" not in body
    assert body["messages"] == ITEM.messages
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9


def test_openai_request_without_temperature_leaves_it_out() -> None:
    item = RequestItem("i", [{"role": "user", "content": "hi"}], max_tokens=5)
    assert "temperature" not in body_of(openai_adapter().build(item, "gpt-4o-mini"))


def test_openai_compatible_request_sends_max_tokens_to_the_configured_server() -> None:
    config = ProviderConfig(kind="openai_compatible", base_url="http://vllm.local:8000/v1/")
    prepared = OpenAICompatibleAdapter("selfhosted", config, api_key=None).build(ITEM, "llama")
    body = body_of(prepared)
    assert prepared.url == "http://vllm.local:8000/v1/chat/completions"
    assert body["max_tokens"] == 64
    assert "max_completion_tokens" not in body
    assert "authorization" not in prepared.headers


def test_openai_compatible_without_base_url_is_a_route_error() -> None:
    with pytest.raises(TerminalError) as info:
        OpenAICompatibleAdapter("selfhosted", ProviderConfig(kind="openai_compatible"), api_key=None)
    assert info.value.code == "missing_base_url"


def test_anthropic_request_moves_system_to_its_own_field_and_sends_its_headers() -> None:
    prepared = anthropic_adapter().build(ITEM, "claude-3-5-haiku-20241022")
    body = body_of(prepared)
    assert prepared.url == "https://api.anthropic.com/v1/messages"
    assert prepared.headers["x-api-key"] == "ak-test"
    assert prepared.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in prepared.headers
    assert body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": "Summarise: the quick brown fox."}]
    assert body["max_tokens"] == 64
    assert body["top_p"] == 0.9


def test_anthropic_request_joins_several_system_messages() -> None:
    item = RequestItem(
        "i",
        [{"role": "system", "content": "A."}, {"role": "developer", "content": "B."}, {"role": "user", "content": "x"}],
        max_tokens=5,
    )
    assert body_of(anthropic_adapter().build(item, "m"))["system"] == "A.\n\nB."


def test_anthropic_request_without_system_message_has_no_system_field() -> None:
    item = RequestItem("i", [{"role": "user", "content": "x"}], max_tokens=5)
    assert "system" not in body_of(anthropic_adapter().build(item, "m"))


@pytest.mark.parametrize("given", [1.0, 0.4, 0.0])
def test_anthropic_request_sends_a_temperature_within_its_range_as_given(given: float) -> None:
    # Above 1 never reaches this adapter: routing sends such items elsewhere (`temperature_above_1`).
    item = RequestItem("i", [{"role": "user", "content": "x"}], max_tokens=5, temperature=given)
    assert body_of(anthropic_adapter().build(item, "m"))["temperature"] == given


def test_anthropic_request_holds_only_fields_anthropic_takes() -> None:
    item = RequestItem(
        "i",
        [{"role": "user", "content": "x"}],
        max_tokens=5,
        params={"response_format": {"type": "json"}, "top_p": 0.5},
    )
    body = body_of(anthropic_adapter().build(item, "m"))
    assert set(body) == {"model", "max_tokens", "messages", "top_p"}


def test_openrouter_request_denies_data_collection_when_the_policy_denies_training() -> None:
    adapter = OpenRouterAdapter(
        "openrouter", ProviderConfig(kind="openrouter"), api_key="or-key", deny_training=True, zero_retention=True
    )
    prepared = adapter.build(ITEM, "openai/gpt-4o-mini")
    body = body_of(prepared)
    assert prepared.url == "https://openrouter.ai/api/v1/chat/completions"
    assert prepared.headers["authorization"] == "Bearer or-key"
    assert body["provider"]["data_collection"] == "deny"
    assert body["provider"]["zdr"] is True
    assert body["usage"] == {"include": True}
    assert body["max_completion_tokens"] == 64


def test_openrouter_request_without_deny_training_does_not_restrict_data_collection() -> None:
    adapter = OpenRouterAdapter("openrouter", ProviderConfig(kind="openrouter"), api_key="k")
    body = body_of(adapter.build(ITEM, "openai/gpt-4o-mini"))
    assert "data_collection" not in body["provider"]
    assert "zdr" not in body["provider"]
    assert body["usage"] == {"include": True}


def test_adapter_for_a_simulator_picks_the_wire_and_never_sends_the_real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REAL_KEY", "sk-real-secret")
    config = ProviderConfig(kind="simulator", wire="anthropic", api_key_env="REAL_KEY")
    adapter = adapter_for("anthropic", config, simulator_url="http://127.0.0.1:1/v1")
    assert isinstance(adapter, AnthropicAdapter)
    assert adapter.api_key == SIMULATOR_KEY
    assert adapter.base_url == "http://127.0.0.1:1/v1"


def test_adapter_for_a_simulator_openrouter_follows_the_workspace_policy() -> None:
    config = ProviderConfig(kind="simulator", wire="openrouter", base_url="http://127.0.0.1:1/v1")
    adapter = adapter_for("openrouter", config, policy=RoutePolicy(deny_training=True))
    assert isinstance(adapter, OpenRouterAdapter)
    assert body_of(adapter.build(ITEM, "x"))["provider"]["data_collection"] == "deny"


def test_adapter_for_a_real_provider_reads_the_key_from_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_OPENAI_KEY", "sk-from-env")
    adapter = adapter_for("openai", ProviderConfig(kind="openai", api_key_env="MY_OPENAI_KEY"))
    assert type(adapter) is OpenAIAdapter
    assert adapter.build(ITEM, "gpt-4o-mini").headers["authorization"] == "Bearer sk-from-env"


# -- parsing answers --------------------------------------------------------------------------------


def test_openai_parse_reads_text_usage_cached_tokens_and_request_id_header() -> None:
    body = openai_body(prompt_tokens=20, completion_tokens=7, prompt_tokens_details={"cached_tokens": 12})
    done = openai_adapter().parse(200, headers(x_request_id="req_123"), body)
    assert done.text == "hi there"
    assert done.finish_reason == "stop"
    assert (done.input_tokens, done.output_tokens, done.cached_tokens) == (20, 7, 12)
    assert done.request_id == "req_123"
    assert done.reported_cost_usd_micros is None


def test_openai_parse_reads_the_input_output_usage_shape() -> None:
    body = openai_body(input_tokens=31, output_tokens=9, input_tokens_details={"cached_tokens": 4})
    done = openai_adapter().parse(200, headers(), body)
    assert (done.input_tokens, done.output_tokens, done.cached_tokens) == (31, 9, 4)


def test_openai_parse_falls_back_to_the_body_id_without_a_request_id_header() -> None:
    done = openai_adapter().parse(200, headers(), openai_body(prompt_tokens=1, completion_tokens=1))
    assert done.request_id == "chatcmpl-abc"


def test_anthropic_parse_joins_text_counts_cache_tokens_as_input_and_maps_stop_reason() -> None:
    body = anthropic_body(
        "max_tokens", input_tokens=10, output_tokens=5, cache_read_input_tokens=100, cache_creation_input_tokens=7
    )
    done = anthropic_adapter().parse(200, headers(request_id="req_ant"), body)
    assert done.text == "hi there"
    assert done.finish_reason == "length"
    assert (done.input_tokens, done.output_tokens, done.cached_tokens) == (117, 5, 100)
    assert done.request_id == "req_ant"


def test_anthropic_parse_maps_end_turn_to_stop_and_uses_the_message_id() -> None:
    done = anthropic_adapter().parse(200, headers(), anthropic_body(input_tokens=3, output_tokens=2))
    assert done.finish_reason == "stop"
    assert done.request_id == "msg_abc"


def test_openrouter_parse_reports_provider_cost_rounded_up_to_micros() -> None:
    adapter = OpenRouterAdapter("openrouter", ProviderConfig(kind="openrouter"), api_key="k")
    done = adapter.parse(200, headers(), openai_body(prompt_tokens=10, completion_tokens=10, cost=0.0000101))
    assert done.reported_cost_usd_micros == 11


def test_openrouter_parse_without_cost_reports_none() -> None:
    adapter = OpenRouterAdapter("openrouter", ProviderConfig(kind="openrouter"), api_key="k")
    done = adapter.parse(200, headers(), openai_body(prompt_tokens=10, completion_tokens=10))
    assert done.reported_cost_usd_micros is None


def test_openai_refusal_is_refused_error_with_the_tokens_billed() -> None:
    body = json.dumps(
        {
            "id": "chatcmpl-r",
            "choices": [{"message": {"role": "assistant", "content": None, "refusal": "I can't help."}}],
            "usage": {"prompt_tokens": 15, "completion_tokens": 3},
        }
    ).encode()
    with pytest.raises(RefusedError) as info:
        openai_adapter().parse(200, headers(x_request_id="req_r"), body)
    err = info.value
    assert isinstance(err, TerminalError)
    assert (err.code, err.message) == ("refused", "I can't help.")
    assert (err.input_tokens, err.output_tokens, err.request_id) == (15, 3, "req_r")


def test_anthropic_refusal_is_refused_error_with_the_tokens_billed() -> None:
    body = anthropic_body("refusal", input_tokens=12, output_tokens=0, cache_read_input_tokens=2)
    with pytest.raises(RefusedError) as info:
        anthropic_adapter().parse(200, headers(), body)
    assert info.value.code == "refused"
    assert (info.value.input_tokens, info.value.output_tokens) == (14, 0)
    assert info.value.request_id == "msg_abc"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"id": "chatcmpl-abc", "choices": [{"index": 0, "mess', "truncated_body"),
        (b"<html><body>502 Bad Gateway</body></html>", "malformed_body"),
        (b"", "malformed_body"),
        (b'{"id": "x", "object": "chat.completion"}', "malformed_body"),
        (b'{"choices": []}', "malformed_body"),
        (b'{"choices": [{"message": null}]}', "malformed_body"),
        (b"[]", "malformed_body"),
    ],
)
def test_openai_cut_or_garbled_body_is_transient(body: bytes, code: str) -> None:
    with pytest.raises(TransientError) as info:
        openai_adapter().parse(200, headers(), body)
    assert info.value.code == code


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "msg_abc", "content": [{"type": "te',
        b"Service Unavailable",
        b'{"id": "msg_abc", "type": "message"}',
        b'{"content": [{"type": "text", "text": "x"}], "usage": null}',
        b'{"content": null, "usage": {"input_tokens": 1}}',
    ],
)
def test_anthropic_cut_or_garbled_body_is_transient(body: bytes) -> None:
    with pytest.raises(TransientError):
        anthropic_adapter().parse(200, headers(), body)


def test_openai_rate_limit_headers_are_read() -> None:
    limits = openai_adapter().rate_limits(
        headers(
            x_ratelimit_limit_requests="500",
            x_ratelimit_limit_tokens="200000",
            x_ratelimit_remaining_requests="499",
            x_ratelimit_remaining_tokens="not-a-number",
        )
    )
    assert (limits.requests_per_minute, limits.tokens_per_minute, limits.remaining_requests) == (500, 200000, 499)
    assert limits.remaining_tokens is None


def test_anthropic_rate_limit_headers_are_read() -> None:
    limits = anthropic_adapter().rate_limits(
        headers(anthropic_ratelimit_requests_limit="50", anthropic_ratelimit_tokens_limit="40000")
    )
    assert (limits.requests_per_minute, limits.tokens_per_minute) == (50, 40000)
    assert limits.remaining_requests is None


# -- classifying errors -----------------------------------------------------------------------------


def openai_error(message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()


def test_429_is_rate_limited_with_retry_after_seconds() -> None:
    err = classify(429, headers(retry_after="7"), openai_error("Rate limit reached", "rate_limit_error"))
    assert isinstance(err, RateLimitedError)
    assert (err.code, err.status, err.retry_after_s) == ("rate_limited", 429, 7.0)
    assert err.message == "Rate limit reached"


def test_a_429_of_flex_out_of_capacity_keeps_its_code_and_other_429s_are_rate_limits() -> None:
    body = json.dumps({"error": {"message": "Resource unavailable", "type": "resource_unavailable", "param": None,
                                 "code": "resource_unavailable"}}).encode()  # fmt: skip
    assert classify(429, headers(), body).code == "resource_unavailable"
    for other in (openai_error("Rate limit reached", "rate_limit_error"), b"not json", b'{"error": "busy"}'):
        assert classify(429, headers(), other).code == "rate_limited"


def test_429_prefers_retry_after_ms() -> None:
    err = classify(429, headers(retry_after="2", retry_after_ms="1500"), b"{}")
    assert isinstance(err, RateLimitedError)
    assert err.retry_after_s == 1.5


def test_429_without_retry_after_has_none() -> None:
    err = classify(429, headers(), b"{}")
    assert isinstance(err, RateLimitedError)
    assert err.retry_after_s is None


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    wait = retry_after_seconds(headers(retry_after=when))
    assert wait is not None
    assert 25 <= wait <= 30


def test_retry_after_that_is_neither_a_number_nor_a_date_is_ignored() -> None:
    assert retry_after_seconds(headers(retry_after="soon")) is None


@pytest.mark.parametrize(
    ("status", "code"), [(500, "http_500"), (502, "http_502"), (503, "http_503"), (529, "overloaded")]
)
def test_server_errors_are_transient(status: int, code: str) -> None:
    err = classify(status, headers(), openai_error("The server had an error", "server_error"))
    assert type(err) is TransientError
    assert (err.code, err.status, err.message) == (code, status, "The server had an error")


def test_anthropic_overloaded_keeps_the_provider_message() -> None:
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).encode()
    with pytest.raises(TransientError) as info:
        anthropic_adapter().parse(529, headers(), body)
    assert (info.value.code, info.value.message) == ("overloaded", "Overloaded")


def test_400_is_terminal_and_keeps_the_provider_message() -> None:
    with pytest.raises(TerminalError) as info:
        openai_adapter().parse(400, headers(), openai_error("Invalid value for 'messages': bad role"))
    assert not isinstance(info.value, TransientError)
    assert (info.value.code, info.value.status) == ("http_400", 400)
    assert info.value.message == "Invalid value for 'messages': bad role"


def test_anthropic_400_is_terminal_and_keeps_the_provider_message() -> None:
    body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}})
    with pytest.raises(TerminalError) as info:
        anthropic_adapter().parse(400, headers(), body.encode())
    assert (info.value.code, info.value.message) == ("http_400", "max_tokens: too big")


@pytest.mark.parametrize(("status", "code"), [(401, "unauthorized"), (403, "unauthorized"), (404, "not_found")])
def test_auth_and_not_found_are_terminal_route_errors(status: int, code: str) -> None:
    err = classify(status, headers(), openai_error("nope"))
    assert type(err) is TerminalError
    assert err.code == code


@pytest.mark.parametrize("status", [408, 409, 425])
def test_request_timeout_and_conflict_are_transient(status: int) -> None:
    assert type(classify(status, headers(), b"")) is TransientError


def test_error_body_that_is_not_json_keeps_its_text() -> None:
    err = classify(502, headers(), b"<html>Bad Gateway</html>")
    assert err.message == "<html>Bad Gateway</html>"
