"""The simulator bills by the providers' published rules and refuses what they refuse."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import SimulatorConfig
from batchrouter.intake.tokens import count_text
from batchrouter.simulator import billing as bill
from batchrouter.simulator import build_app, images

REALFILES = Path(os.environ.get("BATCHROUTER_REALFILES", Path(__file__).resolve().parents[3] / "shared" / "realfiles"))


class Server:
    """The simulator app on a loopback port, served from a thread for the test's duration."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(build_app(config))
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def post(self, path: str, body: Any, *, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=raw if raw is not None else json.dumps(body).encode(),
            headers={"authorization": "Bearer k", "x-api-key": "k", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    server = Server(SimulatorConfig(latency_ms=0, max_output_words=60))
    yield server
    server.close()


def chat(sim: Server, **body: Any) -> tuple[int, dict[str, Any]]:
    return sim.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": user("hello"), **body})


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def cookbook() -> list[dict[str, Any]]:
    path = REALFILES / "cookbook_token_examples.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not here (set BATCHROUTER_REALFILES to the shared realfiles folder)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- images built in the test ---------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def jpeg(width: int, height: int, *, progressive: bool = False) -> bytes:
    exif = b"Exif\x00\x00" + b"\x00" * 40
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    marker = b"\xff\xc2" if progressive else b"\xff\xc0"
    return b"\xff\xd8" + app1 + marker + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xda\x00\x02\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def webp_vp8x(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + b"WEBPVP8X" + struct.pack("<I", len(payload)) + payload


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + b"WEBPVP8L" + struct.pack("<I", len(payload)) + payload


def webp_vp8(width: int, height: int) -> bytes:
    payload = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + b"WEBPVP8 " + struct.pack("<I", len(payload)) + payload


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


def image_message(url: str, detail: str | None = None) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {"url": url} if detail is None else {"url": url, "detail": detail}
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": spec}],
        }
    ]


# -- the cookbook's figures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "billed"),
    [
        ("names-gpt-3.5-turbo", 129),
        ("names-gpt-4o", 124),
        ("names-gpt-4o-mini", 124),
        ("tools-gpt-3.5-turbo", 105),
        ("tools-gpt-4o", 101),
        ("tools-gpt-4o-mini", 101),
    ],
)
def test_simulator_bills_the_cookbook_examples_exactly_what_openai_billed(
    sim: Server, example: str, billed: int
) -> None:
    body = next(row["body"] for row in cookbook() if row["custom_id"] == example)
    status, reply = sim.post("/v1/chat/completions", body)
    assert status == 200, reply
    assert reply["usage"]["prompt_tokens"] == billed


def test_cookbook_tool_definitions_cost_what_the_messages_alone_do_not(sim: Server) -> None:
    rows = {row["custom_id"]: row["body"] for row in cookbook()}
    with_tools = sim.post("/v1/chat/completions", rows["tools-gpt-4o"])[1]["usage"]["prompt_tokens"]
    without = sim.post("/v1/chat/completions", rows["notools-gpt-4o"])[1]["usage"]["prompt_tokens"]
    assert (with_tools, without) == (101, 33)


def test_cookbook_n3_example_bills_three_choices_each_within_its_cap(sim: Server) -> None:
    body = next(row["body"] for row in cookbook() if row["custom_id"] == "n3-gpt-4o")
    status, reply = sim.post("/v1/chat/completions", body)
    assert status == 200
    assert len(reply["choices"]) == 3
    counts = [count_text(c["message"]["content"], "o200k_base") for c in reply["choices"]]
    assert all(0 < c <= body["max_tokens"] for c in counts)
    assert reply["usage"]["completion_tokens"] == sum(counts)
    assert len({c["message"]["content"] for c in reply["choices"]}) > 1


def test_cookbook_low_detail_image_costs_the_base_tokens_and_gpt_35_refuses_images(sim: Server) -> None:
    rows = {row["custom_id"]: row["body"] for row in cookbook()}
    text_only = 3 + 3 + count_text("user", "o200k_base") + count_text("What is in this image?", "o200k_base")
    assert sim.post("/v1/chat/completions", rows["image-gpt-4o"])[1]["usage"]["prompt_tokens"] == text_only + 85
    assert sim.post("/v1/chat/completions", rows["image-gpt-4o-mini"])[1]["usage"]["prompt_tokens"] == text_only + 2833
    status, reply = sim.post("/v1/chat/completions", rows["image-gpt-3.5-turbo"])
    assert status == 400
    assert "image" in reply["error"]["message"] and "gpt-3.5-turbo" in reply["error"]["message"]


# -- image rules ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "detail", "tokens"),
    [
        ("gpt-4o", (1024, 1024), "high", 765),
        ("gpt-4o", (2048, 4096), "high", 1105),
        ("gpt-4o", (4096, 4096), "low", 85),
        ("gpt-4o-2024-08-06", (512, 512), None, 255),
        ("gpt-4.1", (1800, 2400), "auto", 765),
        ("gpt-4o-mini", (1024, 1024), "high", 2833 + 4 * 5667),
        ("o1", (1024, 1024), "high", 75 + 4 * 150),
        ("o3", (100, 100), "low", 75),
        ("gpt-5", (1024, 1024), "high", 70 + 4 * 140),
        ("gpt-4.1-mini", (1024, 1024), "high", 1659),  # 1024 patches x 1.62
        ("gpt-4.1-mini", (1800, 2400), "high", 2352),  # scaled to 33 x 44 patches
        ("gpt-4.1-nano", (128, 64), "low", 20),  # 8 patches x 2.46
        ("o4-mini", (128, 64), None, 14),  # 8 patches x 1.72
        ("gpt-5-mini", (4096, 4096), "high", 2464),  # scaled down to 39 x 39 patches x 1.62
    ],
)
def test_openai_image_tokens_follow_the_published_rule_of_each_model(
    model: str, size: tuple[int, int], detail: str | None, tokens: int
) -> None:
    rule = images.vision_rule(model)
    assert rule is not None
    assert images.openai_image_tokens(rule, *size, detail) == tokens


def test_models_without_vision_have_no_image_rule() -> None:
    assert [images.vision_rule(m) for m in ("gpt-3.5-turbo-0125", "gpt-4", "o3-mini", "o1-mini")] == [None] * 4


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        (png(640, 480), (640, 480)),
        (jpeg(1920, 1080), (1920, 1080)),
        (jpeg(300, 200, progressive=True), (300, 200)),
        (gif(32, 16), (32, 16)),
        (webp_vp8x(4000, 3000), (4000, 3000)),
        (webp_vp8l(800, 600), (800, 600)),
        (webp_vp8(1024, 768), (1024, 768)),
    ],
)
def test_image_size_is_read_from_the_header_of_each_format(raw: bytes, size: tuple[int, int]) -> None:
    assert images.image_bytes_size(raw) == size
    assert images.image_size(data_url(raw), where="x") == size


def test_the_real_clip_jpeg_data_url_has_a_readable_size() -> None:
    path = REALFILES / "clip_batch_input.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    body = json.loads(path.read_text().splitlines()[0])["body"]
    part = next(
        p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"
    )
    width, height = images.image_size(part["image_url"]["url"], where="x")
    assert 0 < width <= 10_000 and 0 < height <= 10_000


def test_an_http_image_gets_a_deterministic_realistic_size() -> None:
    first = images.image_size("https://example.com/a.jpg", where="x")
    assert first == images.image_size("https://example.com/a.jpg", where="x")
    assert first != images.image_size("https://example.com/b.jpg", where="x")
    assert all(256 <= side <= 4096 for side in first)


def test_a_data_url_image_is_billed_by_its_real_size(sim: Server) -> None:
    small = chat(sim, model="gpt-4o", messages=image_message(data_url(png(512, 512)), "high"))[1]
    large = chat(sim, model="gpt-4o", messages=image_message(data_url(png(2048, 1024)), "high"))[1]
    # 2048x1024 is scaled to 1536x768: 3 x 2 tiles; 512x512 is one tile.
    assert large["usage"]["prompt_tokens"] - small["usage"]["prompt_tokens"] == 170 * 6 - 170


def test_an_unreadable_data_url_is_a_400_naming_the_part(sim: Server) -> None:
    status, reply = chat(sim, model="gpt-4o", messages=image_message("data:image/png;base64,bm90IGFuIGltYWdl"))
    assert status == 400
    assert "messages[0].content[1]" in reply["error"]["message"]


@pytest.mark.parametrize(("size", "tokens"), [((200, 200), 54), ((1000, 1000), 1334), ((3000, 1500), 1600)])
def test_anthropic_images_cost_their_area_over_750_capped(size: tuple[int, int], tokens: int) -> None:
    assert images.anthropic_image_tokens(*size) == tokens


# -- completions ------------------------------------------------------------------------------------------


def test_n_choices_are_each_within_the_cap_and_summed(sim: Server) -> None:
    status, reply = chat(sim, n=5, max_completion_tokens=12)
    assert status == 200
    counts = [count_text(c["message"]["content"], "o200k_base") for c in reply["choices"]]
    assert len(counts) == 5 and all(c <= 12 for c in counts)
    assert reply["usage"]["completion_tokens"] == sum(counts)
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("cap", [1, 20, 200, 5000])
def test_reasoning_tokens_are_billed_inside_the_cap(sim: Server, cap: int) -> None:
    status, reply = chat(sim, model="o3-mini", max_completion_tokens=cap, messages=user(f"think {cap}"))
    assert status == 200
    usage = reply["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    visible = count_text(reply["choices"][0]["message"]["content"] or "", "o200k_base")
    assert 0 < reasoning <= cap
    assert usage["completion_tokens"] == reasoning + visible <= cap
    if reasoning == cap:
        assert reply["choices"][0]["finish_reason"] == "length"


def test_reasoning_effort_moves_the_reasoning_tokens(sim: Server) -> None:
    low = chat(sim, model="gpt-5", reasoning_effort="low", max_completion_tokens=8000)[1]
    high = chat(sim, model="gpt-5", reasoning_effort="high", max_completion_tokens=8000)[1]
    minimal = chat(sim, model="gpt-5", reasoning_effort="minimal", max_completion_tokens=8000)[1]
    tokens = [r["usage"]["completion_tokens_details"]["reasoning_tokens"] for r in (minimal, low, high)]
    assert tokens[0] == 0 < tokens[1] <= 256 <= 512 <= tokens[2]


def test_non_reasoning_models_report_no_reasoning_tokens(sim: Server) -> None:
    reply = chat(sim, model="gpt-4.1")[1]
    assert reply["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


def test_a_forced_tool_is_called_with_arguments_that_fit_the_schema(sim: Server) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    status, reply = chat(sim, tools=[WEATHER], tool_choice=choice)
    assert status == 200
    answer = reply["choices"][0]
    assert answer["finish_reason"] == "tool_calls"
    call = answer["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "unit", "days"} and arguments["unit"] in ("c", "f")
    expected = 3 + count_text("get_weather", "o200k_base") + count_text(call["function"]["arguments"], "o200k_base")
    assert reply["usage"]["completion_tokens"] == expected


def test_tool_call_arguments_never_exceed_a_small_cap(sim: Server) -> None:
    status, reply = chat(sim, tools=[WEATHER], tool_choice="required", max_completion_tokens=6)
    assert status == 200
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] <= 6


def test_auto_tool_choice_calls_a_tool_for_some_prompts_and_not_others(sim: Server) -> None:
    finishes = {
        chat(sim, tools=[WEATHER], messages=user(f"question {i}"))[1]["choices"][0]["finish_reason"] for i in range(30)
    }
    assert finishes == {"tool_calls", "stop"}


def test_tool_choice_none_never_calls(sim: Server) -> None:
    for i in range(10):
        reply = chat(sim, tools=[WEATHER], tool_choice="none", messages=user(f"q {i}"))[1]
        assert reply["choices"][0]["finish_reason"] == "stop"


def test_legacy_functions_answer_with_a_function_call(sim: Server) -> None:
    status, reply = chat(sim, functions=[WEATHER["function"]], function_call={"name": "get_weather"})
    assert status == 200
    assert reply["choices"][0]["finish_reason"] == "function_call"
    assert json.loads(reply["choices"][0]["message"]["function_call"]["arguments"])["city"]


def test_assistant_tool_calls_and_tool_messages_are_billed(sim: Server) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    history = [
        *user("weather in Oslo?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
    ]
    base = chat(sim, messages=user("weather in Oslo?"))[1]["usage"]["prompt_tokens"]
    full = chat(sim, messages=history, tools=[WEATHER])[1]["usage"]["prompt_tokens"]
    enc = "o200k_base"
    tools = bill.tool_definition_tokens("gpt-4o-mini", [WEATHER["function"]])
    assistant = (
        3 + count_text("assistant", enc) + 3 + count_text("get_weather", enc) + count_text('{"city":"Oslo"}', enc)
    )
    tool = 3 + count_text("tool", enc) + count_text("4 degrees", enc) + count_text("call_1", enc)
    assert full == base + tools + assistant + tool


def test_json_schema_answers_are_json_of_the_schema_and_the_schema_is_billed(sim: Server) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}, "why": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "grade", "schema": schema, "strict": True}}
    status, reply = chat(sim, response_format=fmt)
    assert status == 200
    assert set(json.loads(reply["choices"][0]["message"]["content"])) == {"score", "why"}
    plain = chat(sim)[1]["usage"]["prompt_tokens"]
    assert reply["usage"]["prompt_tokens"] == plain + bill.schema_tokens("gpt-4o-mini", fmt["json_schema"])


def test_json_object_needs_the_word_json_in_the_messages(sim: Server) -> None:
    status, reply = chat(sim, response_format={"type": "json_object"})
    assert status == 400 and "json" in reply["error"]["message"]
    status, reply = chat(sim, response_format={"type": "json_object"}, messages=user("answer in JSON"))
    assert status == 200
    assert isinstance(json.loads(reply["choices"][0]["message"]["content"]), dict)


def test_logprobs_come_back_with_the_requested_alternatives(sim: Server) -> None:
    reply = chat(sim, logprobs=True, top_logprobs=3)[1]
    content = reply["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == reply["choices"][0]["message"]["content"]
    assert all(len(t["top_logprobs"]) == 3 and t["logprob"] < 0 for t in content)


@pytest.mark.parametrize(
    ("asked", "echoed"), [(None, "default"), ("auto", "default"), ("priority", "priority"), ("flex", "flex")]
)
def test_service_tier_is_echoed(sim: Server, asked: str | None, echoed: str) -> None:
    body = {} if asked is None else {"service_tier": asked}
    status, reply = chat(sim, model="o3", **body)
    assert status == 200
    assert reply["service_tier"] == echoed


def test_flex_is_refused_on_a_model_that_does_not_offer_it(sim: Server) -> None:
    status, reply = chat(sim, model="gpt-4o-mini", service_tier="flex")
    assert status == 400 and reply["error"]["param"] == "service_tier"


def test_stop_cuts_the_answer_before_the_sequence(sim: Server) -> None:
    reply = chat(sim, stop=["e"])[1]
    assert "e" not in reply["choices"][0]["message"]["content"]
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_rejected_prediction_tokens_are_billed_as_completion(sim: Server) -> None:
    prediction = {"type": "content", "content": "a predicted answer that will not match at all"}
    reply = chat(sim, model="gpt-4o", prediction=prediction)[1]
    details = reply["usage"]["completion_tokens_details"]
    visible = count_text(reply["choices"][0]["message"]["content"], "o200k_base")
    assert details["rejected_prediction_tokens"] > 0
    assert reply["usage"]["completion_tokens"] == visible + details["rejected_prediction_tokens"]


def long_prompt(seed: str, words: int = 1400) -> str:
    return " ".join(f"{seed}{i}" for i in range(words))


def test_a_repeated_long_prefix_is_cached_in_128_token_steps() -> None:
    server = Server(SimulatorConfig(latency_ms=0))
    try:
        system = {"role": "system", "content": long_prompt("policy")}
        first = chat(server, messages=[system, *user("first question")])[1]["usage"]
        second = chat(server, messages=[system, *user("second question")])[1]["usage"]
        other_model = chat(server, model="gpt-4.1", messages=[system, *user("first question")])[1]["usage"]
    finally:
        server.close()
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    system_tokens = 3 + 3 + count_text("system", "o200k_base") + count_text(system["content"], "o200k_base")
    assert cached >= 1024 and (cached - 1024) % 128 == 0
    assert system_tokens - 128 < cached <= system_tokens
    assert other_model["prompt_tokens_details"]["cached_tokens"] == 0


def test_short_prompts_are_never_cached(sim: Server) -> None:
    chat(sim, messages=user("same short prompt"))
    reply = chat(sim, messages=user("same short prompt"))[1]
    assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


# -- invalid requests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"n": 0}, "n"),
        ({"n": 1.5}, "n"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"frobnicate": True}, "frobnicate"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"service_tier": "gold"}, "service_tier"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0]"),
    ],
)
def test_invalid_fields_answer_400_naming_the_field(sim: Server, body: dict[str, Any], param: str) -> None:
    status, reply = chat(sim, **body)
    assert status == 400
    assert reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["param"] == param
    assert param.split("[")[0] in reply["error"]["message"]


def test_reasoning_models_refuse_max_tokens_and_a_temperature(sim: Server) -> None:
    assert chat(sim, model="o3-mini", max_tokens=100)[1]["error"]["param"] == "max_tokens"
    assert chat(sim, model="o3-mini", temperature=0.2)[1]["error"]["param"] == "temperature"
    assert chat(sim, model="o3-mini", temperature=1)[0] == 200


def test_documented_fields_are_accepted(sim: Server) -> None:
    status, reply = chat(
        sim,
        model="gpt-4o",
        seed=7,
        top_p=None,
        store=False,
        user="u1",
        metadata={"team": "a"},
        logit_bias={"50256": -100},
        frequency_penalty=0.5,
        presence_penalty=0.5,
        parallel_tool_calls=False,
        tools=[WEATHER],
        max_tokens=50,
        temperature=0.2,
    )
    assert status == 200, reply


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "tools",
        "tool_choice",
        "response_format",
        "n",
        "max_tokens",
        "stop",
        "prediction",
        "temperature",
        "logprobs",
        "functions",
        "service_tier",
        "input",
        "instructions",
        "text",
        "system",
        "max_output_tokens",
        "thinking",
        "stop_sequences",
        "provider",
        "usage",
    ]
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/messages"]),
    extra=st.dictionaries(FIELDS, JSONISH, max_size=5),
    content=JSONISH,
)
def test_odd_requests_never_get_a_500(sim: Server, path: str, extra: dict[str, Any], content: Any) -> None:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "max_tokens": 20}
    body.update(extra)
    status, reply = sim.post(path, None, raw=json.dumps(body, default=str).encode())
    assert status in (200, 400, 404), reply
    assert "error" in reply or "usage" in reply


def test_a_body_that_is_not_an_object_is_a_400(sim: Server) -> None:
    assert sim.post("/v1/chat/completions", [1, 2])[0] == 400
    assert sim.post("/v1/messages", "text")[0] == 400


# -- Responses API ----------------------------------------------------------------------------------------


def test_responses_bill_input_and_instructions_like_chat_messages(sim: Server) -> None:
    status, reply = sim.post("/v1/responses", {"model": "gpt-4.1", "instructions": "be brief", "input": "hello"})
    assert status == 200
    messages = [{"role": "developer", "content": "be brief"}, *user("hello")]
    assert reply["usage"]["input_tokens"] == bill.chat_prompt("gpt-4.1", messages).tokens
    text = reply["output"][0]["content"][0]["text"]
    assert reply["usage"]["output_tokens"] == count_text(text, "o200k_base")
    assert reply["status"] == "completed" and reply["object"] == "response"


def test_responses_reasoning_stays_inside_max_output_tokens(sim: Server) -> None:
    body = {
        "model": "o4-mini",
        "input": [{"role": "user", "content": "think"}],
        "max_output_tokens": 64,
        "reasoning": {"effort": "high"},
    }
    reply = sim.post("/v1/responses", body)[1]
    usage = reply["usage"]
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] <= usage["output_tokens"] <= 64
    assert reply["status"] == "incomplete" and reply["incomplete_details"] == {"reason": "max_output_tokens"}


def test_responses_call_flat_function_tools(sim: Server) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    body = {"model": "gpt-4.1", "input": "weather?", "tools": [tool], "tool_choice": "required"}
    reply = sim.post("/v1/responses", body)[1]
    call = next(item for item in reply["output"] if item["type"] == "function_call")
    assert call["name"] == "get_weather" and json.loads(call["arguments"])["city"]
    plain = sim.post("/v1/responses", {"model": "gpt-4.1", "input": "weather?"})[1]
    assert reply["usage"]["input_tokens"] - plain["usage"]["input_tokens"] == bill.tool_definition_tokens(
        "gpt-4.1", [WEATHER["function"]]
    )


def test_responses_take_function_call_items_and_text_format(sim: Server) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {
        "model": "gpt-4.1",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        "text": {"format": {"type": "json_schema", "name": "out", "schema": schema}},
    }
    status, reply = sim.post("/v1/responses", body)
    assert status == 200, reply
    assert "answer" in json.loads(reply["output"][0]["content"][0]["text"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"input": "x", "max_output_tokens": 5}, "max_output_tokens"),
        ({"input": "x", "messages": []}, "messages"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "reasoning": {"effort": "high"}}, "reasoning.effort"),
    ],
)
def test_responses_refuse_what_openai_refuses(sim: Server, body: dict[str, Any], fragment: str) -> None:
    status, reply = sim.post("/v1/responses", {"model": "gpt-4.1", **body})
    assert status == 400
    assert fragment in reply["error"]["message"]


# -- Anthropic --------------------------------------------------------------------------------------------


def claude(sim: Server, **body: Any) -> tuple[int, dict[str, Any]]:
    return sim.post(
        "/v1/messages", {"model": "claude-sonnet-4-20250514", "max_tokens": 300, "messages": user("hello"), **body}
    )


def test_anthropic_temperature_outside_0_to_1_is_a_400(sim: Server) -> None:
    status, reply = claude(sim, temperature=1.5)
    assert status == 400 and "temperature" in reply["error"]["message"]
    assert claude(sim, temperature=1)[0] == 200


def test_anthropic_system_blocks_bill_like_the_string(sim: Server) -> None:
    as_string = claude(sim, system="be brief and kind")[1]["usage"]["input_tokens"]
    as_blocks = claude(sim, system=[{"type": "text", "text": "be brief and kind"}])[1]["usage"]["input_tokens"]
    assert as_string == as_blocks


def test_anthropic_tools_cost_the_tool_use_prompt_and_their_schema(sim: Server) -> None:
    tool = {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": WEATHER["function"]["parameters"],
    }
    plain = claude(sim)[1]["usage"]["input_tokens"]
    status, reply = claude(sim, tools=[tool], tool_choice={"type": "tool", "name": "get_weather"})
    assert status == 200
    schema = bill.scale(count_text(json.dumps(tool, separators=(",", ":")), "o200k_base"), Decimal("1.2"))
    assert reply["usage"]["input_tokens"] == plain + 313 + schema
    assert reply["stop_reason"] == "tool_use"
    block = next(b for b in reply["content"] if b["type"] == "tool_use")
    assert block["name"] == "get_weather" and "city" in block["input"]


def test_anthropic_tool_use_and_tool_result_blocks_are_billed(sim: Server) -> None:
    history = [
        *user("weather?"),
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "4 degrees and rain"}]},
    ]
    short = claude(sim, messages=user("weather?"))[1]["usage"]["input_tokens"]
    long = claude(sim, messages=history)[1]["usage"]["input_tokens"]
    assert long > short + 2 * 4


def test_anthropic_stop_sequences_stop_the_answer(sim: Server) -> None:
    reply = claude(sim, stop_sequences=["e"])[1]
    assert reply["stop_reason"] == "stop_sequence" and reply["stop_sequence"] == "e"
    assert all("e" not in b["text"] for b in reply["content"] if b["type"] == "text")


def test_anthropic_images_are_billed_by_area(sim: Server) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png(1000, 1000)).decode()},
    }
    text = {"type": "text", "text": "hello"}
    with_image = claude(sim, messages=[{"role": "user", "content": [text, image]}])[1]["usage"]["input_tokens"]
    assert with_image == claude(sim)[1]["usage"]["input_tokens"] + 1334


def test_anthropic_thinking_is_billed_inside_max_tokens(sim: Server) -> None:
    status, reply = claude(sim, max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 2048})
    assert status == 200
    assert reply["content"][0]["type"] == "thinking"
    assert reply["usage"]["output_tokens"] <= 3000


def test_anthropic_cache_control_writes_then_reads_the_prefix() -> None:
    server = Server(SimulatorConfig(latency_ms=0))
    try:
        system = [{"type": "text", "text": long_prompt("rule"), "cache_control": {"type": "ephemeral"}}]
        first = claude(server, system=system, messages=user("one"))[1]["usage"]
        second = claude(server, system=system, messages=user("two"))[1]["usage"]
    finally:
        server.close()
    assert first["cache_creation_input_tokens"] >= 1024 and first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == first["input_tokens"]


def test_anthropic_token_ratio_is_configurable() -> None:
    server = Server(SimulatorConfig(latency_ms=0, anthropic_token_ratio=1.5))
    try:
        text = long_prompt("word", 200)
        tokens = claude(server, messages=user(text))[1]["usage"]["input_tokens"]
    finally:
        server.close()
    assert tokens == 4 + bill.scale(count_text(text, "o200k_base"), Decimal("1.5"))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"top_k": -1}, "top_k"),
        ({"stop": ["x"]}, "stop"),
        ({"messages": [{"role": "system", "content": "x"}]}, "system"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "budget_tokens"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_anthropic_refuses_what_anthropic_refuses(sim: Server, body: dict[str, Any], fragment: str) -> None:
    status, reply = claude(sim, **body)
    assert status == 400
    assert reply["type"] == "error" and fragment in reply["error"]["message"]


# -- OpenRouter -------------------------------------------------------------------------------------------


def openrouter_entry() -> Any:
    return next(e for e in load_catalog().entries if e.provider == "openrouter" and e.upstream.startswith("openai/"))


def test_openrouter_cost_prices_every_billed_token_from_the_catalog(sim: Server) -> None:
    entry = openrouter_entry()
    body = {
        "model": entry.upstream,
        "messages": image_message(data_url(png(800, 600))),
        "tools": [WEATHER],
        "n": 2,
        "usage": {"include": True},
    }
    status, reply = sim.post("/api/v1/chat/completions", body)
    assert status == 200, reply
    usage = reply["usage"]
    expected = (
        usage["prompt_tokens"] * entry.input_usd_per_mtok + usage["completion_tokens"] * entry.output_usd_per_mtok
    ) / 10**6
    assert Decimal(str(usage["cost"])) == pytest.approx(expected, rel=Decimal("1e-9"))


def test_openrouter_refuses_a_route_above_max_price(sim: Server) -> None:
    entry = openrouter_entry()
    cheap = {"prompt": float(entry.input_usd_per_mtok) / 2, "completion": float(entry.output_usd_per_mtok)}
    body = {
        "model": entry.upstream,
        "messages": user("hi"),
        "provider": {"max_price": cheap},
        "usage": {"include": True},
    }
    status, reply = sim.post("/v1/chat/completions", body)
    assert status == 404
    assert reply["error"]["code"] == 404 and "max_price" in reply["error"]["message"]
    enough = {"prompt": float(entry.input_usd_per_mtok), "completion": float(entry.output_usd_per_mtok)}
    assert sim.post("/v1/chat/completions", {**body, "provider": {"max_price": enough}})[0] == 200


# -- real batch files -------------------------------------------------------------------------------------


def test_every_real_batch_file_runs_unchanged(sim: Server) -> None:
    if not REALFILES.exists():
        pytest.skip(f"{REALFILES} is not here")
    refused = []
    for path in sorted(REALFILES.glob("*.jsonl")):
        lines = [line for line in path.read_text().splitlines() if line.strip()][:50]
        for line in lines:
            row = json.loads(line)
            status, reply = sim.post(row["url"], row["body"])
            if status != 200:
                refused.append((path.name, row["custom_id"], reply["error"]["message"]))
    # OpenAI refuses image parts on gpt-3.5-turbo too; the cookbook line shows the request, not a bill.
    assert [(name, custom_id) for name, custom_id, _ in refused] == [
        ("cookbook_token_examples.jsonl", "image-gpt-3.5-turbo")
    ], refused


def test_gpt_5_point_releases_take_a_temperature_only_without_reasoning(sim: Server) -> None:
    body = {"model": "gpt-5.2", "input": "hi", "temperature": 0.7}
    status, reply = sim.post("/v1/responses", body)
    assert status == 200
    assert reply["usage"]["output_tokens_details"]["reasoning_tokens"] == 0
    status, reply = sim.post("/v1/responses", {**body, "reasoning": {"effort": "high"}})
    assert status == 400 and reply["error"]["param"] == "temperature"


MODELS = st.sampled_from(
    ["gpt-4o-mini", "gpt-4.1-nano", "gpt-3.5-turbo-0125", "o3-mini", "o4-mini", "gpt-5", "gpt-5.2"]
)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=MODELS,
    n=st.integers(1, 4),
    cap=st.integers(1, 400),
    tools=st.booleans(),
    forced=st.booleans(),
    json_mode=st.booleans(),
    prompt=st.text(min_size=1, max_size=40),
)
def test_no_choice_ever_bills_more_output_than_its_cap(
    sim: Server, model: str, n: int, cap: int, tools: bool, forced: bool, json_mode: bool, prompt: str
) -> None:
    body: dict[str, Any] = {"model": model, "messages": user(prompt + " json"), "n": n, "max_completion_tokens": cap}
    if tools:
        body["tools"] = [WEATHER]
        body["tool_choice"] = "required" if forced else "auto"
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    status, reply = sim.post("/v1/chat/completions", body)
    assert status == 200, reply
    usage = reply["usage"]
    assert len(reply["choices"]) == n
    assert usage["completion_tokens"] <= n * cap
    assert usage["completion_tokens_details"]["reasoning_tokens"] <= usage["completion_tokens"]
    tools_defs = [WEATHER["function"]] if tools else []
    assert usage["prompt_tokens"] == bill.chat_prompt(model, body["messages"], functions=tools_defs).tokens
    responses = {"model": model, "input": prompt, "max_output_tokens": max(16, cap)}
    status, reply = sim.post("/v1/responses", responses)
    assert status == 200, reply
    assert reply["usage"]["output_tokens"] <= max(16, cap)
    status, reply = sim.post(
        "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": cap, "messages": user(prompt)}
    )
    assert status == 200, reply
    assert reply["usage"]["output_tokens"] <= cap


def test_a_cap_above_the_models_output_limit_is_a_400(sim: Server) -> None:
    limit = max(e.max_output_tokens for e in load_catalog().entries if e.upstream == "gpt-4o-mini")
    status, reply = chat(sim, max_completion_tokens=limit + 1)
    assert status == 400 and reply["error"]["param"] == "max_completion_tokens"
    assert chat(sim, max_completion_tokens=limit)[0] == 200
    status, reply = claude(sim, max_tokens=10**9)
    assert status == 400 and "max_tokens" in reply["error"]["message"]


def test_deeply_nested_json_is_a_400_not_a_500(sim: Server) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    assert sim.post("/v1/chat/completions", None, raw=raw)[0] == 400


def test_responses_input_images_are_billed_like_chat_image_parts(sim: Server) -> None:
    url = data_url(png(1024, 1024))
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": url, "detail": "high"},
    ]
    reply = sim.post("/v1/responses", {"model": "gpt-4.1-mini", "input": [{"role": "user", "content": content}]})[1]
    plain = sim.post("/v1/responses", {"model": "gpt-4.1-mini", "input": [{"role": "user", "content": content[:1]}]})[1]
    assert reply["usage"]["input_tokens"] - plain["usage"]["input_tokens"] == 1659  # 1024 patches x 1.62
