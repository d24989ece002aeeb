"""The official OpenAI and Anthropic SDKs talk to the simulator as to the real APIs."""

from __future__ import annotations

import base64
import json
import struct
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from batchrouter.core.config import SimulatorConfig
from batchrouter.intake.tokens import count_text
from batchrouter.simulator import running_simulator

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


# -- every field, through the SDKs --------------------------------------------------------------------


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


def tiny_png(width: int, height: int) -> str:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk).decode()


class Grade(pydantic.BaseModel):
    score: int
    reason: str


def test_openai_sdk_parses_a_forced_tool_call(url: str) -> None:
    reply = oai(url).chat.completions.create(
        model="gpt-4o",
        messages=user("weather in Oslo?"),
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city", "unit"}
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_openai_sdk_parses_n_choices_summed_in_usage(url: str) -> None:
    reply = oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("three ways"), n=3, max_tokens=30)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage is not None
    counts = [count_text(c.message.content or "", "o200k_base") for c in reply.choices]
    assert reply.usage.completion_tokens == sum(counts) and max(counts) <= 30


def test_openai_sdk_sends_images_and_sees_them_billed(url: str) -> None:
    def ask(image_url: str, detail: str) -> int:
        content = [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": image_url, "detail": detail}},
        ]
        reply = oai(url).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        )
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    small = ask(f"data:image/png;base64,{tiny_png(512, 512)}", "high")
    low = ask(f"data:image/png;base64,{tiny_png(512, 512)}", "low")
    remote = ask("https://example.com/photo.jpg", "high")
    assert small - low == 170  # one 512-px tile on top of the 85 base
    assert remote >= low


def test_openai_sdk_reads_reasoning_tokens_inside_the_cap(url: str) -> None:
    reply = oai(url).chat.completions.create(
        model="o3-mini", messages=user("prove it"), max_completion_tokens=300, reasoning_effort="low"
    )
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    reasoning = reply.usage.completion_tokens_details.reasoning_tokens or 0
    assert 0 < reasoning <= reply.usage.completion_tokens <= 300


def test_openai_sdk_parses_structured_output_into_a_model(url: str) -> None:
    reply = oai(url).chat.completions.parse(model="gpt-4o-mini", messages=user("grade this"), response_format=Grade)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Grade)


def test_openai_sdk_reads_logprobs_and_the_service_tier(url: str) -> None:
    reply = oai(url).chat.completions.create(
        model="o4-mini", messages=user("hi"), service_tier="flex", max_completion_tokens=2000
    )
    assert reply.service_tier == "flex"
    reply = oai(url).chat.completions.create(model="gpt-4o", messages=user("hi"), logprobs=True, top_logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert len(logprobs.content[0].top_logprobs) == 2


def test_openai_sdk_raises_bad_request_naming_an_invalid_field(url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hi"), temperature=3)
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        oai(url).chat.completions.create(model="gpt-4o-mini", messages=user("hi"), n=0)
    assert info.value.param == "n"


def test_openai_sdk_responses_api_returns_text_and_usage(url: str) -> None:
    reply = oai(url).responses.create(model="gpt-4.1", instructions="be brief", input="hello", max_output_tokens=200)
    assert reply.id.startswith("resp_") and reply.status == "completed"
    assert reply.output_text
    assert reply.usage is not None
    assert reply.usage.output_tokens == count_text(reply.output_text, "o200k_base")
    assert reply.usage.input_tokens_details.cached_tokens == 0


def test_openai_sdk_responses_api_with_reasoning_and_tools(url: str) -> None:
    function = WEATHER_TOOL["function"]
    reply = oai(url).responses.create(
        model="o4-mini",
        input=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[{"type": "function", **function}],
        tool_choice="required",
        reasoning={"effort": "medium"},
        max_output_tokens=4000,
    )
    kinds = [item.type for item in reply.output]
    assert kinds == ["reasoning", "function_call"]
    call = reply.output[1]
    assert call.type == "function_call" and json.loads(call.arguments)["city"]
    assert reply.usage is not None and reply.usage.output_tokens_details.reasoning_tokens > 0


def test_openai_sdk_responses_parse_structured_text(url: str) -> None:
    reply = oai(url).responses.parse(model="gpt-4.1", input="grade this", text_format=Grade)
    assert isinstance(reply.output_parsed, Grade)


def test_openai_sdk_through_openrouter_reads_the_cost_and_a_max_price_refusal(url: str) -> None:
    client = oai(url)
    reply = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=user("hi"), extra_body={"usage": {"include": True}}
    )
    assert reply.usage is not None
    assert float((reply.usage.model_extra or {})["cost"]) > 0
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(
            model="openai/gpt-4o-mini",
            messages=user("hi"),
            extra_body={"usage": {"include": True}, "provider": {"max_price": {"prompt": 0.01, "completion": 0.01}}},
        )
    assert "max_price" in info.value.message


def test_anthropic_sdk_parses_tool_use_images_and_thinking(url: str) -> None:
    tool = {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": tiny_png(800, 600)}}
    reply = claude(url).messages.create(
        model=CLAUDE,
        max_tokens=4000,
        system=[{"type": "text", "text": "You answer with tools."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "weather where this was taken?"}, image]}],  # type: ignore[list-item]
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert reply.stop_reason == "tool_use"
    assert [b.type for b in reply.content] == ["thinking", "tool_use"]
    use = reply.content[1]
    assert use.type == "tool_use" and use.name == "get_weather" and "city" in use.input  # type: ignore[operator]
    assert reply.usage.input_tokens > 640 + 313  # the image (800 x 600 / 750) and the tool-use prompt
    assert reply.usage.output_tokens <= 4000


def test_anthropic_sdk_sees_stop_sequences_and_cache_usage(url: str) -> None:
    reply = claude(url).messages.create(model=CLAUDE, max_tokens=200, messages=user("hello"), stop_sequences=["e"])
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "e"
    system = [
        {"type": "text", "text": " ".join(f"rule{i}" for i in range(1500)), "cache_control": {"type": "ephemeral"}}
    ]
    first = claude(url).messages.create(model=CLAUDE, max_tokens=50, system=system, messages=user("a"))  # type: ignore[arg-type]
    second = claude(url).messages.create(model=CLAUDE, max_tokens=50, system=system, messages=user("b"))  # type: ignore[arg-type]
    assert (first.usage.cache_creation_input_tokens or 0) >= 1024
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens


def test_anthropic_sdk_raises_bad_request_for_a_temperature_above_1(url: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        # This SDK release no longer types `temperature`; the wire field is still Anthropic's.
        claude(url).messages.create(model=CLAUDE, max_tokens=10, messages=user("hi"), extra_body={"temperature": 1.5})
    assert "temperature" in info.value.message
