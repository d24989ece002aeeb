"""Request fields as users write them: every field is priced and passed on, mapped, or refused by name."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import LimitsConfig, ProviderConfig, RoutePolicy
from batchrouter.execution.providers import AnthropicAdapter, OpenAIAdapter, OpenRouterAdapter, RequestItem
from batchrouter.intake import tokens
from batchrouter.intake.manifest import read_manifest, request_messages
from batchrouter.pricing.quote import Quote, build_quote

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["location"],
        },
    },
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def line(custom_id: str, body: Any, url: str = CHAT) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def quote_of(catalog: Catalog, *lines: str, policy: RoutePolicy | None = None) -> Quote:
    manifest = read_manifest("t.jsonl", "\n".join(lines).encode(), catalog=catalog, limits=LimitsConfig())
    return build_quote(manifest, workspace="w", catalog=catalog, policy=policy or RoutePolicy(), workers=1)


def items_of(catalog: Catalog, *lines: str) -> dict[str, dict[str, Any]]:
    manifest = read_manifest("t.jsonl", "\n".join(lines).encode(), catalog=catalog, limits=LimitsConfig())
    return {r["item_id"]: r for r in manifest.items.to_dicts()}


def by_id(quote: Quote) -> dict[str, dict[str, Any]]:
    return {r["item_id"]: r for r in quote.items.to_dicts()}


def chat(content: str = "What's the weather like in San Francisco?", **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **fields}


DOCUMENTED_FIELDS: dict[str, Any] = {
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "stop": ["\n\n"],
    "seed": 7,
    "logprobs": True,
    "top_logprobs": 3,
    "service_tier": "default",
    "store": False,
    "user": "user-1",
    "metadata": {"run": "a"},
    "top_p": None,
    "frequency_penalty": 0.1,
    "presence_penalty": 0.1,
    "max_completion_tokens": 50,
}


def test_every_documented_chat_field_is_accepted_and_passed_on(catalog: Catalog) -> None:
    (row,) = items_of(catalog, line("a", chat(**DOCUMENTED_FIELDS))).values()
    assert row["reject_code"] is None, row["reject_reason"]
    params = json.loads(row["params"])
    for key in DOCUMENTED_FIELDS.keys() - {"metadata", "max_completion_tokens"}:
        assert key in params and params[key] == DOCUMENTED_FIELDS[key], key
    assert row["max_tokens"] == 50
    assert json.loads(row["metadata"]) == {"run": "a"}  # kept in receipts and outputs


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("web_search_options", {}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("frobnicate", 1),
        ("tools", [{"type": "web_search"}]),
        ("service_tier", "ultra"),
        ("stop", ["a", "b", "c", "d", "e"]),
    ],
)
def test_a_field_that_cannot_be_priced_or_is_unknown_is_refused_by_name(
    catalog: Catalog, field: str, value: Any
) -> None:
    (row,) = items_of(catalog, line("a", chat(**{field: value}))).values()
    assert row["reject_code"] == "unsupported_field"
    assert row["reject_field"].startswith(field)
    assert field in row["reject_reason"]


def test_tool_definitions_are_billed_as_input_at_least_as_openai_counts_them(catalog: Catalog) -> None:
    # The cookbook's example: OpenAI billed 101 prompt tokens on gpt-4o for it (33 without the tool).
    system = {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    }
    body = {
        "model": "gpt-4o",
        "messages": [system, {"role": "user", "content": "What's the weather like in San Francisco?"}],
    }
    rows = by_id(quote_of(catalog, line("plain", body), line("tools", {**body, "tools": [WEATHER_TOOL]})))
    assert rows["plain"]["input_tokens"] == 33
    assert rows["tools"]["input_tokens"] >= 101 - 12  # our tool is a little shorter than the cookbook's


def test_n_choices_reserve_the_output_cap_n_times(catalog: Catalog) -> None:
    rows = by_id(quote_of(catalog, line("one", chat(max_tokens=100)), line("five", chat(max_tokens=100, n=5))))
    one, five = rows["one"], rows["five"]
    assert five["route"] == one["route"]
    entry = catalog.entry(one["route"])
    out_delta = 4 * 100 * entry.output_pico_per_token
    assert five["reserve_usd_micros"] - one["reserve_usd_micros"] >= out_delta // 10**6


@pytest.mark.parametrize("n", [0, -1, 1.5, "3", 129, True])
def test_invalid_n_is_rejected(catalog: Catalog, n: Any) -> None:
    (row,) = items_of(catalog, line("a", chat(n=n))).values()
    assert (row["reject_code"], row["reject_field"]) == ("invalid_n", "n")


def test_an_image_part_is_accepted_sent_as_written_and_counted(catalog: Catalog) -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.org/a.png", "detail": "low"}}
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}],
    }
    (row,) = items_of(catalog, line("a", body)).values()
    assert row["reject_code"] is None
    assert row["images"] == [{"detail": "low", "width": None, "height": None}]
    assert "image" in row["features"]
    (message,) = request_messages(row["system"], row["prompt"], row["messages"])
    assert message == body["messages"][0]


def test_tool_calls_and_tool_results_are_accepted_and_billed(catalog: Catalog) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": '{"location":"SF"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in SF?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and foggy"},
    ]
    body = {"model": "gpt-4o", "messages": messages, "tools": [WEATHER_TOOL]}
    (row,) = items_of(catalog, line("a", body)).values()
    assert row["reject_code"] is None, row["reject_reason"]
    assert '"location"' in row["billed_text"] and "call_1" in row["billed_text"]
    assert request_messages(row["system"], row["prompt"], row["messages"]) == messages


# ---- /v1/responses ---------------------------------------------------------------------------------


def test_a_responses_line_with_string_input_becomes_one_user_message(catalog: Catalog) -> None:
    (row,) = items_of(catalog, line("r", {"model": "gpt-4o-mini", "input": "Say hi"}, RESPONSES)).values()
    assert row["reject_code"] is None
    assert row["endpoint"] == "responses"
    assert request_messages(row["system"], row["prompt"], row["messages"]) == [{"role": "user", "content": "Say hi"}]


def test_a_responses_line_is_translated_field_by_field(catalog: Catalog) -> None:
    body = {
        "model": "gpt-4o-mini",
        "instructions": "Be brief.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "https://x.org/i.png", "detail": "low"},
                ],
            },
        ],
        "max_output_tokens": 40,
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
        "temperature": 0.2,
    }
    (row,) = items_of(catalog, line("r", body, RESPONSES)).values()
    assert row["reject_code"] is None, row["reject_reason"]
    assert row["max_tokens"] == 40
    params = json.loads(row["params"])
    assert params["tools"] == [
        {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    ]
    assert params["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert params["response_format"]["json_schema"]["name"] == "out"
    sent = request_messages(row["system"], row["prompt"], row["messages"])
    assert sent[0] == {"role": "developer", "content": "Be brief."}
    assert sent[1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://x.org/i.png", "detail": "low"}}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_1"),
        ("tools", [{"type": "web_search"}]),
        ("background", True),
        ("reasoning", {"effort": "low", "summary": "auto"}),
        ("unknown_thing", 1),
    ],
)
def test_responses_fields_that_cannot_run_here_are_refused_by_name(catalog: Catalog, field: str, value: Any) -> None:
    (row,) = items_of(catalog, line("r", {"model": "gpt-4o-mini", "input": "x", field: value}, RESPONSES)).values()
    assert row["reject_code"] == "unsupported_field"
    assert row["reject_field"].startswith(field.split(".")[0])


# ---- routing by feature ----------------------------------------------------------------------------


def _mixed_catalog(catalog: Catalog) -> Catalog:
    """A model served by OpenAI and Anthropic, so routing must choose by feature."""
    from dataclasses import replace

    openai = next(e for e in catalog.entries if e.provider == "openai")
    anthropic = replace(
        next(e for e in catalog.entries if e.provider == "anthropic"),
        name=openai.name,
        input_usd_per_mtok=openai.input_usd_per_mtok / 10,
        output_usd_per_mtok=openai.output_usd_per_mtok / 10,
    )
    return Catalog(version="mixed", entries=(openai, anthropic))


def test_a_feature_one_provider_lacks_routes_the_item_to_one_that_has_it(catalog: Catalog) -> None:
    mixed = _mixed_catalog(catalog)
    model = mixed.entries[0].name
    base = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    rows = by_id(
        quote_of(
            mixed,
            line("plain", base),
            line("hot", {**base, "temperature": 1.5}),
            line("n", {**base, "n": 2}),
            line("seed", {**base, "seed": 1}),
        )
    )
    assert rows["plain"]["provider"] == "anthropic"  # cheapest
    for item in ("hot", "n", "seed"):
        assert rows[item]["provider"] == "openai", item
        assert all(not f.startswith("anthropic:") for f in rows[item]["fallbacks"])


def test_no_route_accepting_a_feature_rejects_the_item_naming_field_and_route(catalog: Catalog) -> None:
    claude = next(e for e in catalog.entries if e.provider == "anthropic")
    only = Catalog(version="c", entries=(claude,))
    body = {"model": claude.name, "messages": [{"role": "user", "content": "hi"}], "n": 3}
    (row,) = by_id(quote_of(only, line("a", body))).values()
    assert (row["reject_code"], row["reject_field"]) == ("unsupported_field", "n")
    assert claude.route in row["reject_reason"]


# ---- adapters ----------------------------------------------------------------------------------------


def test_anthropic_gets_each_field_in_its_own_form() -> None:
    call = {
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": '{"location":"SF"}'},
    }
    item = RequestItem(
        "a",
        [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        ],
        max_tokens=30,
        temperature=0.5,
        params={
            "stop": "END",
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "user": "u-9",
            "top_p": 0.9,
        },
    )
    adapter = AnthropicAdapter("anthropic", ProviderConfig(kind="anthropic"), api_key="k")
    body = json.loads(adapter.build(item, "claude-x").body)
    assert body["system"] == "Be brief."
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [
        {
            "name": "get_current_weather",
            "description": WEATHER_TOOL["function"]["description"],
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["top_p"] == 0.9 and body["temperature"] == 0.5
    user, assistant, result = body["messages"]
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert assistant["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_current_weather", "input": {"location": "SF"}}
    ]
    assert result == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]}


def test_anthropic_tool_use_answers_come_back_as_openai_tool_calls() -> None:
    adapter = AnthropicAdapter("anthropic", ProviderConfig(kind="anthropic"), api_key="k")
    answer = {
        "id": "msg_1",
        "content": [{"type": "tool_use", "id": "toolu_2", "name": "f", "input": {"x": 1}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    done = adapter.parse(200, {}, json.dumps(answer).encode())
    assert done.finish_reason == "tool_calls"
    assert done.choices is not None
    (call,) = done.choices[0]["message"]["tool_calls"]
    assert call["function"] == {"name": "f", "arguments": '{"x": 1}'}


def test_openai_gets_n_and_passed_fields_as_written() -> None:
    item = RequestItem("a", [{"role": "user", "content": "hi"}], 20, None, {"seed": 3, "tools": [WEATHER_TOOL]}, n=4)
    body = json.loads(OpenAIAdapter("openai", ProviderConfig(kind="openai"), api_key="k").build(item, "gpt-4o").body)
    assert body["n"] == 4 and body["seed"] == 3 and body["tools"] == [WEATHER_TOOL]
    assert body["max_completion_tokens"] == 20


def test_openrouter_is_capped_at_the_reserved_price() -> None:
    item = RequestItem("a", [{"role": "user", "content": "hi"}], 20, max_price=(150_000, 600_000))
    adapter = OpenRouterAdapter("openrouter", ProviderConfig(kind="openrouter"), api_key="k", base_url="http://x")
    body = json.loads(adapter.build(item, "openai/gpt-4o-mini").body)
    assert body["provider"]["max_price"] == {"prompt": 0.15, "completion": 0.6}


# ---- token counting under concurrency ----------------------------------------------------------------


def test_concurrent_parallel_counts_never_mix_up_texts(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(tokens, "PARALLEL_MIN_CHARS", 1)
    corpora = [[f"{w} " * (i % 7 + 1) for i in range(300)] for w in ("alpha", "beta gamma", "delta epsilon zeta")]
    expected = [[tokens.count_text(t, "o200k_base") for t in c] for c in corpora]

    def count(k: int) -> list[int]:
        return tokens.count_texts(pl.Series(corpora[k % 3]), "o200k_base", workers=2).tolist()

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(count, range(6)))
    for k, got in enumerate(results):
        assert got == expected[k % 3]


def test_json_object_without_the_word_json_is_refused_before_it_reaches_the_provider(catalog: Catalog) -> None:
    fmt = {"type": "json_object"}
    rows = items_of(
        catalog,
        line("no", chat("List three colours.", response_format=fmt)),
        line("yes", chat("List three colours as JSON.", response_format=fmt)),
    )
    assert (rows["no"]["reject_code"], rows["no"]["reject_field"]) == ("unsupported_field", "response_format")
    assert "json" in rows["no"]["reject_reason"]
    assert rows["yes"]["reject_code"] is None


def test_a_prediction_is_passed_on_and_refused_with_tools_n_or_logprobs(catalog: Catalog) -> None:
    prediction = {"type": "content", "content": "The weather is"}
    rows = items_of(
        catalog,
        line("ok", chat(prediction=prediction)),
        line("tools", chat(prediction=prediction, tools=[WEATHER_TOOL])),
        line("n", chat(prediction=prediction, n=2)),
        line("logprobs", chat(prediction=prediction, logprobs=True)),
    )
    assert json.loads(rows["ok"]["params"])["prediction"] == prediction
    for item in ("tools", "n", "logprobs"):
        assert (rows[item]["reject_code"], rows[item]["reject_field"]) == ("unsupported_field", "prediction"), item


def test_a_prediction_reserves_its_tokens_as_output_on_top_of_the_cap(catalog: Catalog) -> None:
    predicted = "The weather in San Francisco is foggy and mild today. " * 20
    rows = by_id(
        quote_of(
            catalog,
            line("plain", chat(max_tokens=50)),
            line("pred", chat(max_tokens=50, prediction={"type": "content", "content": predicted})),
        )
    )
    entry = catalog.entry(rows["plain"]["route"])
    predicted_tokens = tokens.count_text(predicted, "o200k_base")
    extra = rows["pred"]["reserve_usd_micros"] - rows["plain"]["reserve_usd_micros"]
    assert extra >= predicted_tokens * entry.output_pico_per_token // 10**6
    assert rows["pred"]["input_tokens"] == rows["plain"]["input_tokens"]  # not billed as input


def test_a_temperature_is_refused_on_a_model_that_always_reasons(catalog: Catalog) -> None:
    from batchrouter.intake.request_fields import always_reasons

    model = next(e.name for e in catalog.entries if always_reasons(e) and len(catalog.routes_for(e.name)) == 1)
    rows = by_id(
        quote_of(
            catalog,
            line("t", {"model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}),
            line("d", {"model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 1}),
        )
    )
    assert (rows["t"]["reject_code"], rows["t"]["reject_field"]) == ("unsupported_field", "temperature")
    assert rows["d"]["status"] == "accepted"
