"""The official OpenAI and Anthropic SDKs talk to the simulator as to the real APIs."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import anthropic
import openai
import pytest

from batchrouter.config import SimulatorConfig
from batchrouter.simulator import running_simulator
from batchrouter.tokens import count_text

pytestmark = [
    pytest.mark.integration,
    # The SDK warns that catalog models are past their date; the simulator serves any model name.
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]

RPM = 60_000
CLAUDE = "claude-sonnet-4-20250514"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_simulator(SimulatorConfig(latency_ms=0, rpm=RPM, max_output_words=40)) as base:
        yield base


def oai(url: str, *, max_retries: int = 0, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="k", max_retries=max_retries, timeout=timeout)


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url.removesuffix("/v1"), api_key="k", max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- OpenAI -----------------------------------------------------------------------------------------


def test_openai_sdk_parses_text_usage_ids_and_finish_reason(url: str) -> None:
    reply = oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hello"), max_completion_tokens=4096)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.message.refusal is None
    assert reply.model == "gpt-4o-mini"
    assert reply.id.startswith("chatcmpl-")
    assert reply._request_id is not None and reply._request_id.startswith("req_")
    assert reply.usage is not None
    # As OpenAI bills it: 3 for the reply priming, 3 per message, 1 for "user", 1 for "hello".
    assert reply.usage.prompt_tokens == 8
    assert reply.usage.completion_tokens == count_text(choice.message.content, "o200k_base")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


def test_openai_sdk_sees_finish_reason_length_when_the_cap_cuts_the_answer(url: str) -> None:
    reply = oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hello"), max_completion_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 5


def test_openai_sdk_reads_a_refusal(url: str) -> None:
    reply = oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("do harm [[sim:refuse]]"))
    assert reply.choices[0].message.refusal
    assert reply.choices[0].message.content is None
    assert reply.usage is not None and reply.usage.completion_tokens == 0


def test_openai_sdk_gets_the_same_answer_for_the_same_request(url: str) -> None:
    client = oai(url)
    first = client.chat.completions.create(model="gpt-4o-mini", messages=user("same question"), temperature=0.5)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=user("same question"), temperature=0.5)
    other = client.chat.completions.create(model="gpt-4o-mini", messages=user("other question"), temperature=0.5)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.id == first.id
    assert other.id != first.id


def test_openai_sdk_raises_rate_limit_error_with_retry_after(url: str) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hi [[sim:429]]"))
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "1"
    assert int(err.response.headers["retry-after-ms"]) > 0
    assert err.type == "rate_limit_error"


def test_openai_sdk_retries_a_429_after_retry_after_and_succeeds(url: str) -> None:
    reply = oai(url, max_retries=2).chat.completions.create(model="gpt-4o-mini", messages=user("hi [[sim:429*1]]"))
    assert reply.choices[0].message.content


def test_openai_sdk_raises_bad_request_with_the_message(url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hi [[sim:400]]"))
    assert info.value.status_code == 400
    assert "simulated rejection" in info.value.message
    assert info.value.type == "invalid_request_error"


def test_openai_sdk_raises_internal_server_error_for_a_500(url: str) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hi [[sim:500]]"))
    assert info.value.status_code == 500


def test_openai_sdk_without_an_api_key_gets_401(url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        oai(url).chat.completions.create(
            model="gpt-4o-mini", messages=user("hi"), extra_headers={"Authorization": openai.Omit()}
        )
    assert info.value.status_code == 401


def test_openai_sdk_sees_rate_limit_headers(url: str) -> None:
    raw = oai(url).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user("hi"))
    assert raw.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert 0 <= int(raw.headers["x-ratelimit-remaining-requests"]) <= RPM // 60  # one second's burst at most
    assert raw.headers["x-request-id"] == raw.parse()._request_id


# -- Anthropic --------------------------------------------------------------------------------------


def test_anthropic_sdk_parses_text_usage_ids_and_stop_reason(url: str) -> None:
    reply = claude(url).messages.create(model=CLAUDE, max_tokens=4096, system="be brief", messages=user("hello"))
    assert reply.type == "message"
    assert reply.role == "assistant"
    assert reply.model == CLAUDE
    assert reply.stop_reason == "end_turn"
    assert reply.id.startswith("msg_")
    assert reply._request_id is not None and reply._request_id.startswith("req_")
    block = reply.content[0]
    assert block.type == "text"
    assert block.text
    # 1.2 x o200k_base, rounded up per part ("be brief" 2 -> 3, "hello" 1 -> 2), 4 per message, 3 for a system prompt.
    assert reply.usage.input_tokens == 12
    assert reply.usage.output_tokens == int(
        (count_text(block.text, "o200k_base") * Decimal("1.2")).to_integral_value(rounding="ROUND_CEILING")
    )
    assert reply.usage.cache_read_input_tokens == 0


def test_anthropic_sdk_sees_stop_reason_max_tokens_when_the_cap_cuts_the_answer(url: str) -> None:
    reply = claude(url).messages.create(model=CLAUDE, max_tokens=5, messages=user("hello"))
    assert reply.stop_reason == "max_tokens"
    assert 0 < reply.usage.output_tokens <= 5


def test_anthropic_sdk_reads_a_refusal(url: str) -> None:
    reply = claude(url).messages.create(model=CLAUDE, max_tokens=100, messages=user("do harm [[sim:refuse]]"))
    assert reply.stop_reason == "refusal"
    assert reply.content == []
    assert reply.usage.output_tokens == 0


def test_anthropic_sdk_gets_the_same_answer_for_the_same_request(url: str) -> None:
    client = claude(url)
    first = client.messages.create(model=CLAUDE, max_tokens=200, messages=user("same question"))
    second = client.messages.create(model=CLAUDE, max_tokens=200, messages=user("same question"))
    assert second.content == first.content
    assert second.id == first.id


def test_anthropic_sdk_raises_rate_limit_error_with_retry_after(url: str) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        claude(url).messages.create(model=CLAUDE, max_tokens=10, messages=user("hi [[sim:429]]"))
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "1"


def test_anthropic_sdk_raises_bad_request_with_the_message(url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(url).messages.create(model=CLAUDE, max_tokens=10, messages=user("hi [[sim:400]]"))
    assert "simulated rejection" in info.value.message


def test_anthropic_sdk_sees_529_overloaded_for_a_server_fault(url: str) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        claude(url).messages.create(model=CLAUDE, max_tokens=10, messages=user("hi [[sim:500]]"))
    assert info.value.status_code == 529
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_anthropic_sdk_without_an_api_key_gets_401(url: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude(url).messages.create(
            model=CLAUDE,
            max_tokens=10,
            messages=user("hi"),
            extra_headers={"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()},
        )
    assert info.value.status_code == 401


def test_anthropic_sdk_sees_rate_limit_headers(url: str) -> None:
    raw = claude(url).messages.with_raw_response.create(model=CLAUDE, max_tokens=10, messages=user("hi"))
    assert raw.headers["anthropic-ratelimit-requests-limit"] == str(RPM)
    assert "anthropic-ratelimit-requests-remaining" in raw.headers
    assert raw.headers["request-id"].startswith("req_")


def test_anthropic_wire_requires_max_tokens(url: str) -> None:
    request = urllib.request.Request(
        f"{url}/messages",
        data=json.dumps({"model": CLAUDE, "messages": user("hi")}).encode(),
        headers={"x-api-key": "k", "content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 400
    assert "max_tokens" in json.loads(info.value.read())["error"]["message"]


# -- the simulator process --------------------------------------------------------------------------


def test_simulator_stops_promptly_with_a_stalled_request_in_flight() -> None:
    with running_simulator(SimulatorConfig(latency_ms=0)) as base:
        with pytest.raises(openai.APITimeoutError):
            oai(base, timeout=0.3).chat.completions.create(model="gpt-4o-mini", messages=user("hi [[sim:stall]]"))
        stopping = time.monotonic()
    # The stalled handler sleeps for an hour; stopping must not wait out a graceful-shutdown timeout for it.
    assert time.monotonic() - stopping < 5
