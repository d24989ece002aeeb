"""A provider simulator: a real HTTP server speaking the OpenAI and Anthropic wire formats.

Stands in for the providers in the demo, tests and benchmarks. Outputs are deterministic (a digest
of the request picks the words and the length) and usage is billed by the providers' published
rules (`batchrouter.simulator_billing`). Endpoints, under `/v1` and OpenRouter's `/api/v1`:

- `POST /chat/completions` (OpenAI; OpenRouter when the body carries OpenRouter's `provider`,
  `usage`, `models`, `transforms`, `route` or `plugins`, or the path is `/api/v1`): every field
  OpenAI documents is checked as OpenAI checks it (an unknown field or a value out of range is a
  400 naming it); `n` choices, each within `max_completion_tokens` / `max_tokens`; reasoning
  models report `reasoning_tokens` inside that cap; tools are sometimes called (always when
  `tool_choice` forces it) with arguments that fit the cap; JSON response formats answer JSON;
  `logprobs`, `service_tier`, `prediction` and cached prompt prefixes are reported as OpenAI does.
  OpenRouter answers carry `usage.cost` priced from the catalog entry whose upstream name is the
  model, and a `provider.max_price` below that price is refused with a 404 as OpenRouter does.
- `POST /responses` (OpenAI Responses): `input` as a string or items, `instructions`,
  `max_output_tokens`, function `tools`, `text.format`, `reasoning`.
- `POST /messages` (Anthropic): tools and tool blocks, `stop_sequences`, images, `system` as a
  string or blocks, `thinking`, `cache_control` breakpoints with cache usage fields.

Output billing, the same on every wire: each choice stays within its cap (`max_completion_tokens`,
`max_tokens` or `max_output_tokens`; a cap above the catalog's `max_output_tokens` for the model is
a 400). Reasoning models bill hidden reasoning tokens first, drawn from the request digest by effort
(low 32-256, medium 128-1024, high 512-4096, xhigh 1024-8192; gpt-5.1 and later default to none),
inside the cap; Anthropic `thinking` bills 256 up to `budget_tokens` the same way. A function call
bills 3 plus its name and arguments (4 on Anthropic). Rejected `prediction` tokens are billed as
completion tokens on top of the answer, as OpenAI does. OpenAI cached input: the longest message
prefix (tools and schema first) seen within `prompt_cache_ttl_s` on the same model, counted from
1024 tokens in steps of 128; Anthropic: the prefix up to the last `cache_control` block, written on
first sight and read after, from 1024 tokens (2048 on Haiku).

Limits and faults are configurable:

- latency: fixed, uniform or log-normal around `latency_ms`;
- requests and tokens per minute, enforced with token buckets like the providers' (a minute's
  allowance refilled continuously, a burst of one second's worth); over them: 429 with
  Retry-After and the provider's rate-limit headers (`x-ratelimit-*` or `anthropic-ratelimit-*`);
- faults, each with a probability: 5xx (529 `overloaded_error` on Anthropic), stalls that never
  answer, truncated bodies, malformed JSON, slow trickle of the body;
- per-item faults on demand: a prompt containing `[[sim:KIND]]` gets that fault on every attempt
  (KIND: `500`, `400`, `refuse`, `stall`, `truncate`, `malformed`, `trickle`, `429`), or only on its
  first N attempts with `[[sim:KIND*N]]`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from batchrouter import simulator_billing as bill
from batchrouter.config import SimulatorConfig
from batchrouter.simulator_billing import WireRejection
from batchrouter.tokens import count_text

_MARKER = re.compile(r"\[\[sim:([a-z0-9]+)(?:\*(\d+))?\]\]")
_WORDS = (
    "alpha beta gamma delta summary result answer the of and report item value clear short final note data "
    "model output token request batch route provider receipt quote reserve settle deliver"
).split()
DEFAULT_CAP = 4096
MAX_OUTPUT_UNKNOWN = 1_000_000  # a model outside the catalog: no provider writes more in one answer
OPENROUTER_FIELDS = frozenset({"provider", "usage", "models", "transforms", "route", "plugins"})
REASONING_TOKENS = {
    "none": (0, 0),
    "minimal": (0, 0),
    "low": (32, 256),
    "medium": (128, 1024),
    "high": (512, 4096),
    "xhigh": (1024, 8192),
}
ANTHROPIC_CACHE_MIN = 1024
ANTHROPIC_HAIKU_CACHE_MIN = 2048
ANTHROPIC_TOOL_FRAME = 4


class Bucket:
    """A token bucket: `per_minute` allowance refilled continuously, one second's worth of burst."""

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float) -> float:
        """Take `amount` and return 0, or take nothing and return the seconds until it would fit."""
        self._refill()
        need = min(amount, self.capacity)
        if self.level >= need:
            self.level -= amount
            return 0.0
        return (need - self.level) / self.rate

    def give_back(self, amount: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def remaining(self) -> int:
        self._refill()
        return max(0, int(self.level))


@dataclass
class SimulatorState:
    config: SimulatorConfig
    rng: random.Random = field(init=False)
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: int = 0
    rate_limited: int = 0
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    prices: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    max_output: dict[str, int] = field(default_factory=dict)
    cache: bill.PrefixCache = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.cache = bill.PrefixCache(self.config.prompt_cache_ttl_s)
        from batchrouter.catalog import load_catalog

        for entry in load_catalog().entries:
            if entry.provider == "openrouter":
                self.prices[entry.upstream] = (entry.input_usd_per_mtok, entry.output_usd_per_mtok)
            for name in (entry.name, entry.upstream):
                self.max_output[name] = max(self.max_output.get(name, 0), entry.max_output_tokens)

    def check_cap(self, model: str, cap: int | None, key: str) -> int:
        """`cap` if the model can write that many tokens (none given: a default within the model's limit)."""
        limit = self.max_output.get(model, MAX_OUTPUT_UNKNOWN)
        if cap is None:
            return min(DEFAULT_CAP, limit)
        if cap > limit:
            raise WireRejection(
                f"{key} is too large: {cap}. This model supports at most {limit} output tokens; lower {key}.",
                param=key,
            )
        return cap

    def bucket(self, key: str, kind: str, limit: int) -> Bucket:
        found = self.buckets.get((key, kind))
        if found is None:
            found = self.buckets[(key, kind)] = Bucket(limit)
        return found


def _latency(config: SimulatorConfig, rng: random.Random) -> float:
    base = config.latency_ms / 1000.0
    if config.latency_shape == "uniform":
        return rng.uniform(0.5 * base, 1.5 * base)
    if config.latency_shape == "lognormal":
        return min(base * 20, rng.lognormvariate(0, 0.5) * base)
    return base


def _fault_for(state: SimulatorState, text: str, digest_key: str) -> str | None:
    marker = _MARKER.search(text)
    if marker:
        kind, times = marker.group(1), marker.group(2)
        state.attempts[digest_key] += 1
        if times is None or state.attempts[digest_key] <= int(times):
            return kind
        return None
    c, r = state.config, state.rng.random()
    for kind, rate in (
        ("500", c.error_rate),
        ("stall", c.stall_rate),
        ("truncate", c.truncate_rate),
        ("malformed", c.malformed_rate),
        ("trickle", c.trickle_rate),
    ):
        if r < rate:
            return kind
        r -= rate
    return None


def _limit_headers(wire: str, rpm: Bucket | None, tpm: Bucket | None, wait: float = 0.0) -> dict[str, str]:
    headers: dict[str, str] = {}
    if wire == "anthropic":
        if rpm:
            headers["anthropic-ratelimit-requests-limit"] = str(rpm.limit)
            headers["anthropic-ratelimit-requests-remaining"] = str(rpm.remaining())
        if tpm:
            headers["anthropic-ratelimit-tokens-limit"] = str(tpm.limit)
            headers["anthropic-ratelimit-tokens-remaining"] = str(tpm.remaining())
    else:
        if rpm:
            headers["x-ratelimit-limit-requests"] = str(rpm.limit)
            headers["x-ratelimit-remaining-requests"] = str(rpm.remaining())
            headers["x-ratelimit-reset-requests"] = f"{max(wait, 60.0 / rpm.limit):.3f}s"
        if tpm:
            headers["x-ratelimit-limit-tokens"] = str(tpm.limit)
            headers["x-ratelimit-remaining-tokens"] = str(tpm.remaining())
    if wait:
        headers["retry-after"] = str(max(1, int(wait + 0.999)))
        headers["retry-after-ms"] = str(int(wait * 1000) + 1)
    return headers


STATE = web.AppKey("state", SimulatorState)


def _output_words(digest: bytes, limit: int) -> list[str]:
    n = 8 + digest[0] % max(1, limit - 8)
    return [_WORDS[digest[1 + i % 30] % len(_WORDS)] for i in range(n)]


def _fit(text: str, budget: int, counter: Callable[[str], int]) -> tuple[str, int, bool]:
    """The longest prefix of `text` within `budget` tokens (cut at a word when possible), its tokens, whether cut."""
    tokens = counter(text)
    if tokens <= budget:
        return text, tokens, False
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if counter(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo]
    if " " in cut and text[lo : lo + 1] not in ("", " "):
        shorter = cut[: cut.rindex(" ")]
        if counter(shorter) <= budget:
            cut = shorter
    return cut, counter(cut), True


# -- request checks, as the providers make them ----------------------------------------------------------


def _number(body: dict[str, Any], key: str, lo: float, hi: float | None = None, *, integer: bool = False) -> None:
    value = body.get(key)
    if value is None:
        return
    kind = "integer" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise WireRejection(
            f"Invalid type for '{key}': expected an {kind}, but got {type(value).__name__} instead.", param=key
        )
    if value < lo:
        raise WireRejection(
            f"Invalid '{key}': {kind} below minimum value. Expected a value >= {lo}, but got {value} instead.",
            param=key,
        )
    if hi is not None and value > hi:
        raise WireRejection(
            f"Invalid '{key}': {kind} above maximum value. Expected a value <= {hi}, but got {value} instead.",
            param=key,
        )


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], label: str) -> None:
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise WireRejection(
            f"Invalid type for '{key}': expected {label}, but got {type(value).__name__} instead.", param=key
        )


def _one_of(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    value = body.get(key)
    if value is not None and value not in allowed:
        raise WireRejection(
            f"Invalid value for '{key}': {value!r}. Supported values are: {', '.join(repr(a) for a in allowed)}.",
            param=key,
        )


def _stops(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise WireRejection(
            f"Invalid value for '{key}': expected a string or an array of at most 4 strings.", param=key
        )
    return [s for s in stops if s]


def _metadata(body: dict[str, Any]) -> None:
    value = body.get("metadata")
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > 16 or not all(isinstance(v, str) for v in value.values()):
        raise WireRejection("Invalid 'metadata': expected an object of at most 16 string values.", param="metadata")


def _mentions_json(value: Any) -> bool:
    return "json" in json.dumps(value, ensure_ascii=False).lower()


def _forced_tool(functions: list[dict[str, Any]], name: Any, key: str) -> str:
    if not isinstance(name, str) or name not in {f.get("name") for f in functions}:
        raise WireRejection(f"Invalid value for '{key}': no function named {name!r} was given in tools.", param=key)
    return name


def _function_defs(tools: Any, key: str, *, flat: bool) -> list[dict[str, Any]]:
    """Function definitions of `tools` (Chat: `{type, function: {...}}`; Responses: flat `{type, name, ...}`)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > 128:
        raise WireRejection(f"Invalid '{key}': expected an array of at most 128 tools.", param=key)
    functions = []
    for i, tool in enumerate(tools):
        at = f"{key}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise WireRejection(
                f"Invalid value for '{at}.type': {kind!r}; the simulator runs function tools only.", param=at
            )
        fn = tool if flat else tool.get("function")
        if not isinstance(fn, dict):
            raise WireRejection(f"Missing required parameter: '{at}.function'.", param=at)
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
            raise WireRejection(
                f"Invalid '{at}.name': expected 1-64 letters, digits, underscores or dashes, got {name!r}.", param=at
            )
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise WireRejection(f"Invalid type for '{at}.parameters': expected an object.", param=at)
        functions.append({k: fn[k] for k in ("name", "description", "parameters") if k in fn})
    return functions


@dataclass
class Plan:
    """What a request asks for and what its prompt is billed, whatever the wire."""

    dialect: str  # openai | openrouter | responses | anthropic
    model: str
    body: dict[str, Any]
    prompt_tokens: int
    cap: int
    marker_text: str
    counter: Callable[[str], int]
    n: int = 1
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h: bool = False
    reasoning: tuple[int, int] = (0, 0)
    functions: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"  # none | auto | required | the name of the function it forces
    legacy_functions: bool = False
    json_schema: Any = None
    json_object: bool = False
    stops: list[str] = field(default_factory=list)
    service_tier: str = "default"


def _counter(encoding: str, ratio: Decimal) -> Callable[[str], int]:
    return lambda text: bill.scale(count_text(text, encoding), ratio)


def _reasoning_range(
    body: dict[str, Any], model: str, effort: Any, key: str, *, strict: bool = True
) -> tuple[int, int]:
    """The span of reasoning tokens the request may bill; refuses sampling settings its effort forbids."""
    if not bill.is_reasoning_model(model):
        if effort is not None and strict:
            raise WireRejection(f"Unsupported parameter: '{key}' is not supported with this model.", param=key)
        return (0, 0)
    if effort is not None and effort not in REASONING_TOKENS:
        raise WireRejection(
            f"Invalid value for '{key}': {effort!r}. Supported values are: {', '.join(REASONING_TOKENS)}.", param=key
        )
    effort = effort or bill.default_reasoning_effort(model)
    temperature = body.get("temperature")
    # Reasoning models take only the default temperature unless they reason with effort "none" (gpt-5.1 on).
    if strict and effort != "none" and temperature is not None and temperature != 1:
        raise WireRejection(
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.",
            param="temperature",
        )
    return REASONING_TOKENS[str(effort)]


def _service_tier(body: dict[str, Any], model: str) -> str:
    _one_of(body, "service_tier", ("auto", "default", "flex", "priority", "scale"))
    tier = body.get("service_tier") or "auto"
    if tier == "flex" and not bill.offers_flex(model):
        raise WireRejection(
            f"Invalid value for 'service_tier': flex processing is not available for {model}.", param="service_tier"
        )
    return "default" if tier == "auto" else str(tier)


def _sampling_checks(body: dict[str, Any]) -> None:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _typed(body, "store", bool, "a boolean")
    _typed(body, "user", str, "a string")
    _typed(body, "prompt_cache_key", str, "a string")
    _typed(body, "safety_identifier", str, "a string")
    _typed(body, "parallel_tool_calls", bool, "a boolean")
    _metadata(body)
    if body.get("stream"):
        raise WireRejection(
            "Invalid 'stream': the simulator answers whole responses only; send stream false.", param="stream"
        )


_CHAT_FIELDS = frozenset(
    "model messages audio frequency_penalty function_call functions logit_bias logprobs max_completion_tokens "
    "max_tokens metadata modalities n parallel_tool_calls prediction presence_penalty prompt_cache_key "
    "reasoning_effort response_format safety_identifier seed service_tier stop store stream stream_options "
    "temperature tool_choice tools top_logprobs top_p user verbosity web_search_options".split()
)


def _chat_plan(body: dict[str, Any], state: SimulatorState, *, openrouter: bool) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireRejection("Missing required parameter: 'model'.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireRejection("Missing required parameter: 'messages' must be a non-empty array.", param="messages")
    if not openrouter:
        unknown = sorted(set(body) - _CHAT_FIELDS)
        if unknown:
            raise WireRejection(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    _sampling_checks(body)
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, -2, 2)
    _number(body, "n", 1, 128, integer=True)
    _number(body, "max_tokens", 1, integer=True)
    _number(body, "max_completion_tokens", 1, integer=True)
    _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    _typed(body, "logprobs", bool, "a boolean")
    _typed(body, "logit_bias", dict, "an object")
    _one_of(body, "verbosity", ("low", "medium", "high"))
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise WireRejection(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            param="top_logprobs",
        )
    reasoning = bill.is_reasoning_model(model)
    if reasoning and not openrouter and body.get("max_tokens") is not None:
        raise WireRejection(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
        )
    if body.get("audio") is not None or "audio" in (body.get("modalities") or []):
        raise WireRejection("Invalid value for 'modalities': the simulator answers text only.", param="modalities")
    if body.get("web_search_options") is not None and "search" not in model:
        raise WireRejection(
            "Invalid 'web_search_options': web search is available only on search models.", param="web_search_options"
        )
    tier = _service_tier(body, model) if not openrouter else "default"
    plan = Plan(
        dialect="openrouter" if openrouter else "openai",
        model=model,
        body=body,
        prompt_tokens=0,
        cap=state.check_cap(
            model,
            body.get("max_completion_tokens") or body.get("max_tokens"),
            "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens",
        ),
        marker_text=json.dumps(messages, ensure_ascii=False),
        counter=_counter(bill.openai_encoding(model), Decimal(1)),
        n=int(body.get("n") or 1),
        reasoning=_reasoning_range(
            body, model, body.get("reasoning_effort"), "reasoning_effort", strict=not openrouter
        ),
        stops=_stops(body.get("stop"), "stop"),
        service_tier=tier,
    )
    _response_format(plan, body.get("response_format"), "response_format", messages)
    _chat_tools(plan, body)
    _prediction(body, model)
    ratio = Decimal(str(state.config.anthropic_token_ratio)) if openrouter and "claude" in model else Decimal(1)
    if ratio != 1:
        plan.counter = _counter("o200k_base", ratio)
    prompt = bill.chat_prompt(model, messages, functions=plan.functions, json_schema=plan.json_schema, ratio=ratio)
    plan.prompt_tokens = prompt.tokens
    if not openrouter:
        plan.cached_tokens = bill.cached_tokens(prompt, state.cache, model)
    return plan


def _response_format(plan: Plan, value: Any, key: str, prompt: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise WireRejection(
            f"Invalid value for '{key}.type': expected 'text', 'json_object' or 'json_schema'.", param=key
        )
    if value["type"] == "json_object":
        if not _mentions_json(prompt):
            raise WireRejection(
                f"'messages' must contain the word 'json' in some form, to use '{key}' of type 'json_object'.",
                param=key,
            )
        plan.json_object = True
    elif value["type"] == "json_schema":
        spec = value.get("json_schema") if key == "response_format" else value
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise WireRejection(f"Missing required parameter: '{key}.json_schema.name'.", param=key)
        if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
            raise WireRejection(f"Invalid type for '{key}.schema': expected an object.", param=key)
        plan.json_schema = {k: spec[k] for k in ("name", "description", "schema", "strict") if k in spec}


def _chat_tools(plan: Plan, body: dict[str, Any]) -> None:
    tools = _function_defs(body.get("tools"), "tools", flat=False)
    if body.get("functions") is not None:
        if tools:
            raise WireRejection("Invalid request: give 'tools' or the legacy 'functions', not both.", param="functions")
        if not isinstance(body["functions"], list):
            raise WireRejection("Invalid type for 'functions': expected an array.", param="functions")
        tools = _function_defs(
            [{"type": "function", "function": f} for f in body["functions"]], "functions", flat=False
        )
        plan.legacy_functions = True
    plan.functions = tools
    key = "function_call" if plan.legacy_functions else "tool_choice"
    choice = body.get(key)
    if body.get("tool_choice") is not None and not body.get("tools"):
        raise WireRejection(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if body.get("parallel_tool_calls") is not None and not body.get("tools"):
        raise WireRejection(
            "Invalid value for 'parallel_tool_calls': only allowed when 'tools' are specified.",
            param="parallel_tool_calls",
        )
    if choice is None or choice == "auto":
        plan.tool_choice = "auto"
    elif choice == "none" or (choice == "required" and not plan.legacy_functions):
        plan.tool_choice = str(choice)
    elif isinstance(choice, dict):
        name = choice.get("name") if plan.legacy_functions else (choice.get("function") or {}).get("name")
        plan.tool_choice = _forced_tool(tools, name, key)
    else:
        raise WireRejection(f"Invalid value for '{key}': {choice!r}.", param=key)


def _prediction(body: dict[str, Any], model: str) -> None:
    prediction = body.get("prediction")
    if prediction is None:
        return
    if not isinstance(prediction, dict) or prediction.get("type") != "content":
        raise WireRejection("Invalid value for 'prediction.type': expected 'content'.", param="prediction")
    if not re.match(r"(gpt-4o|gpt-4\.1)", bill.bare_model(model)):
        raise WireRejection(
            f"Invalid 'prediction': predicted outputs are not supported by model {model}.", param="prediction"
        )
    if (body.get("n") or 1) > 1 or body.get("tools") or body.get("logprobs"):
        raise WireRejection(
            "Invalid 'prediction': predicted outputs cannot be combined with n > 1, tools or logprobs.",
            param="prediction",
        )


def _prediction_text(body: dict[str, Any]) -> str:
    prediction = body.get("prediction")
    if not isinstance(prediction, dict):
        return ""
    content = prediction.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


_RESPONSES_FIELDS = frozenset(
    "model input instructions max_output_tokens tools tool_choice parallel_tool_calls text reasoning temperature "
    "top_p store metadata user service_tier previous_response_id truncation include top_logprobs stream background "
    "prompt_cache_key safety_identifier max_tool_calls".split()
)


def _responses_plan(body: dict[str, Any], state: SimulatorState) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireRejection("Missing required parameter: 'model'.", param="model")
    unknown = sorted(set(body) - _RESPONSES_FIELDS)
    if unknown:
        raise WireRejection(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0])
    _sampling_checks(body)
    _number(body, "max_output_tokens", 16, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    _one_of(body, "truncation", ("auto", "disabled"))
    if body.get("previous_response_id") is not None:
        raise WireRejection(
            f"Previous response with id '{body['previous_response_id']}' not found: the simulator keeps no responses.",
            param="previous_response_id",
        )
    if body.get("background"):
        raise WireRejection("Invalid 'background': the simulator answers in the foreground only.", param="background")
    messages = _responses_messages(body)
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise WireRejection("Invalid type for 'reasoning': expected an object.", param="reasoning")
    text = body.get("text")
    if text is not None and not isinstance(text, dict):
        raise WireRejection("Invalid type for 'text': expected an object.", param="text")
    plan = Plan(
        dialect="responses",
        model=model,
        body=body,
        prompt_tokens=0,
        cap=state.check_cap(model, body.get("max_output_tokens"), "max_output_tokens"),
        marker_text=json.dumps(messages, ensure_ascii=False),
        counter=_counter(bill.openai_encoding(model), Decimal(1)),
        reasoning=_reasoning_range(body, model, (reasoning or {}).get("effort"), "reasoning.effort"),
        service_tier=_service_tier(body, model),
    )
    _response_format(plan, (text or {}).get("format"), "text.format", messages)
    plan.functions = _function_defs(body.get("tools"), "tools", flat=True)
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        plan.tool_choice = str(choice or "auto")
    elif isinstance(choice, dict) and choice.get("type") == "function":
        plan.tool_choice = _forced_tool(plan.functions, choice.get("name"), "tool_choice")
    else:
        raise WireRejection(f"Invalid value for 'tool_choice': {choice!r}.", param="tool_choice")
    prompt = bill.chat_prompt(model, messages, functions=plan.functions, json_schema=plan.json_schema, where="input")
    plan.prompt_tokens = prompt.tokens
    plan.cached_tokens = bill.cached_tokens(prompt, state.cache, model)
    return plan


def _responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `instructions` and `input` as chat messages, billed by the same rules."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise WireRejection("Invalid type for 'instructions': expected a string.", param="instructions")
        messages.append({"role": "developer", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise WireRejection("Missing required parameter: 'input' must be a string or a non-empty array.", param="input")
    for i, item in enumerate(given):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise WireRejection(f"Invalid type for '{at}': expected an object.", param=at)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
        elif kind == "function_call":
            call = {"name": item.get("name"), "arguments": item.get("arguments", "")}
            messages.append({"role": "assistant", "content": None, "tool_calls": [{"function": call}]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": output})
        elif kind == "reasoning":
            continue  # earlier reasoning passed back is not billed again
        else:
            raise WireRejection(
                f"Invalid value for '{at}.type': {kind!r}; the simulator takes messages and function calls.", param=at
            )
    return messages


_MESSAGES_FIELDS = frozenset(
    "model messages max_tokens system metadata stop_sequences stream temperature top_p top_k tools tool_choice "
    "thinking service_tier".split()
)


def _messages_plan(body: dict[str, Any], state: SimulatorState) -> Plan:
    unknown = sorted(set(body) - _MESSAGES_FIELDS)
    if unknown:
        raise WireRejection(f"{unknown[0]}: Extra inputs are not permitted", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireRejection("model: Field required", param="model")
    if "max_tokens" not in body:
        raise WireRejection("max_tokens: Field required", param="max_tokens")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise WireRejection("max_tokens: Input should be an integer greater than or equal to 1", param="max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireRejection("messages: Field required (a non-empty list)", param="messages")
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise WireRejection(f"{key}: range: 0..1", param=key)
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise WireRejection("top_k: Input should be a non-negative integer", param="top_k")
    if body.get("stream"):
        raise WireRejection("stream: the simulator answers whole messages only", param="stream")
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise WireRejection("service_tier: Input should be 'auto' or 'standard_only'", param="service_tier")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise WireRejection("metadata: only user_id is permitted", param="metadata")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s.strip() for s in stops)):
        raise WireRejection("stop_sequences: Input should be a list of non-whitespace strings", param="stop_sequences")
    reasoning = _thinking(body, max_tokens)
    ratio = Decimal(str(state.config.anthropic_token_ratio))
    count = bill.anthropic_input(model, body, ratio)
    plan = Plan(
        dialect="anthropic",
        model=model,
        body=body,
        prompt_tokens=count.tokens,
        cap=state.check_cap(model, max_tokens, "max_tokens"),
        marker_text=json.dumps([body.get("system"), messages], ensure_ascii=False),
        counter=_counter("o200k_base", ratio),
        reasoning=reasoning,
        stops=list(stops or []),
    )
    tools = body.get("tools") or []
    plan.functions = [
        {"name": t["name"], "description": t.get("description", ""), "parameters": t.get("input_schema")} for t in tools
    ]
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise WireRejection(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", param="tool_choice"
            )
        if not tools and choice["type"] != "none":
            raise WireRejection("tool_choice may only be specified while providing tools.", param="tool_choice")
        kind = choice["type"]
        plan.tool_choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or _forced_tool(
            plan.functions, choice.get("name"), "tool_choice.name"
        )
    least = ANTHROPIC_HAIKU_CACHE_MIN if "haiku" in model else ANTHROPIC_CACHE_MIN
    if count.cache_prefix_tokens >= least:
        if state.cache.seen(count.cache_digest, ttl_s=max(state.cache.ttl_s, count.cache_ttl_s)):
            plan.cached_tokens = count.cache_prefix_tokens
        else:
            plan.cache_write_tokens = count.cache_prefix_tokens
            plan.cache_write_1h = count.cache_ttl_s > 300
        state.cache.remember(count.cache_digest)
    return plan


def _thinking(body: dict[str, Any], max_tokens: int) -> tuple[int, int]:
    thinking = body.get("thinking")
    if thinking is None:
        return (0, 0)
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise WireRejection("thinking.type: Input should be 'enabled' or 'disabled'", param="thinking")
    if thinking["type"] == "disabled":
        return (0, 0)
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
        raise WireRejection(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024", param="thinking"
        )
    if budget >= max_tokens:
        raise WireRejection("`max_tokens` must be greater than `thinking.budget_tokens`", param="max_tokens")
    if body.get("temperature") not in (None, 1):
        raise WireRejection("`temperature` may only be set to 1 when thinking is enabled.", param="temperature")
    return (min(256, budget), budget)


# -- answers ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One generated choice: its text or function call, and the output tokens it is billed."""

    text: str | None
    call: tuple[str, str] | None
    tokens: int
    reasoning_tokens: int
    cut: bool
    stop_sequence: str | None = None


def _draw(digest: bytes, span: tuple[int, int]) -> int:
    lo, hi = span
    return lo + int.from_bytes(digest[5:7], "big") % (hi - lo + 1) if hi else 0


def _pick_function(plan: Plan, digest: bytes) -> dict[str, Any] | None:
    if not plan.functions or plan.tool_choice == "none":
        return None
    if plan.tool_choice == "required":
        return plan.functions[digest[4] % len(plan.functions)]
    if plan.tool_choice == "auto":
        return plan.functions[digest[4] % len(plan.functions)] if digest[3] % 3 == 0 else None
    return next(f for f in plan.functions if f["name"] == plan.tool_choice)


def _answer(plan: Plan, digest: bytes, words: list[str]) -> Answer:
    """A choice within the cap: hidden reasoning first, then a function call or text."""
    reasoning = min(plan.cap, _draw(digest, plan.reasoning))
    budget = plan.cap - reasoning
    fn = _pick_function(plan, digest)
    if fn is not None:
        arguments = json.dumps(bill.value_for(fn.get("parameters") or {"type": "object"}, words), ensure_ascii=False)
        frame = (ANTHROPIC_TOOL_FRAME if plan.dialect == "anthropic" else bill.TOOL_CALL_OVERHEAD) + plan.counter(
            fn["name"]
        )
        if frame + plan.counter(arguments) <= budget:
            return Answer(None, (fn["name"], arguments), frame + plan.counter(arguments), reasoning, False)
        if plan.dialect != "anthropic":
            arguments, used, _ = _fit(arguments, max(0, budget - frame), plan.counter)
            return Answer(None, (fn["name"], arguments), min(budget, frame + used), reasoning, True)
    if plan.json_schema is not None:
        text = json.dumps(bill.value_for(plan.json_schema.get("schema"), words), ensure_ascii=False)
    elif plan.json_object:
        text = json.dumps({"answer": " ".join(words)})
    else:
        text = " ".join(words)
    stop = next((s for s in plan.stops if s in text), None)
    if stop is not None:
        text = text[: text.index(stop)]
    text, used, cut = _fit(text, budget, plan.counter)
    return Answer(text, None, used, reasoning, cut, None if cut else stop)


def _choice_digest(digest: bytes, i: int) -> bytes:
    return digest if i == 0 else hashlib.sha256(digest + i.to_bytes(4, "big")).digest()


def _logprobs(text: str, digest: bytes, top: int) -> dict[str, Any]:
    content = []
    for k, token in enumerate(re.findall(r"\s*\S+", text)):
        logprob = -round((digest[k % 32] + 1) / 256, 4)
        alternatives = [
            {"token": token, "logprob": logprob, "bytes": list(token.encode())},
            *(
                {"token": " " + _WORDS[(digest[(k + j) % 32] + j) % len(_WORDS)], "logprob": logprob - j, "bytes": None}
                for j in range(1, top)
            ),
        ][:top]
        content.append(
            {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alternatives}
        )
    return {"content": content, "refusal": None}


def _openrouter_cost(state: SimulatorState, plan: Plan, completion_tokens: int) -> float:
    price_in, price_out = state.prices.get(plan.model, (Decimal("0.15"), Decimal("0.60")))
    return float((plan.prompt_tokens * price_in + completion_tokens * price_out) / 10**6)


def _openrouter_price_refusal(state: SimulatorState, plan: Plan) -> web.Response | None:
    """OpenRouter's answer when no endpoint of the model is within the request's `provider.max_price`."""
    provider = plan.body.get("provider")
    limit = provider.get("max_price") if isinstance(provider, dict) else None
    if limit is None:
        return None
    if not isinstance(limit, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in limit.values()
    ):
        return _error(
            "openrouter",
            400,
            "invalid_request_error",
            "provider.max_price: expected non-negative numbers (USD per million tokens)",
        )
    price_in, price_out = state.prices.get(plan.model, (Decimal("0.15"), Decimal("0.60")))
    over = [
        f"{key} {price} > {limit[key]}"
        for key, price in (("prompt", price_in), ("completion", price_out))
        if key in limit and price > Decimal(str(limit[key]))
    ]
    if not over:
        return None
    return _error(
        "openrouter",
        404,
        "not_found",
        f"No endpoints found for {plan.model} within your max_price ({', '.join(over)} USD per million tokens).",
    )


def _chat_payload(state: SimulatorState, plan: Plan, digest: bytes, refused: bool) -> dict[str, Any]:
    config = state.config
    choices: list[dict[str, Any]] = []
    completion = reasoning = 0
    top = int(plan.body.get("top_logprobs") or 0)
    for i in range(plan.n):
        d = _choice_digest(digest, i)
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if refused:
            message["refusal"] = "I can't help with that request."
            choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": "stop"})
            continue
        answer = _answer(plan, d, _output_words(d, config.max_output_words))
        completion += answer.tokens + answer.reasoning_tokens
        reasoning += answer.reasoning_tokens
        if answer.call is not None:
            name, arguments = answer.call
            if plan.legacy_functions:
                message["function_call"] = {"name": name, "arguments": arguments}
                finish = "length" if answer.cut else "function_call"
            else:
                message["tool_calls"] = [
                    {
                        "id": f"call_{d.hex()[:24]}",
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ]
                finish = "length" if answer.cut else "tool_calls"
        else:
            message["content"] = answer.text
            finish = "length" if answer.cut else "stop"
        wants_logprobs = plan.body.get("logprobs") and answer.text and not bill.is_reasoning_model(plan.model)
        logprobs = _logprobs(answer.text or "", d, top) if wants_logprobs else None
        choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
    accepted = rejected = 0
    predicted = _prediction_text(plan.body)
    if predicted and not refused:
        first = str(choices[0]["message"].get("content") or "")
        common = next(
            (k for k, (a, b) in enumerate(zip(predicted, first, strict=False)) if a != b),
            min(len(predicted), len(first)),
        )
        accepted = plan.counter(predicted[:common])
        rejected = max(0, plan.counter(predicted) - accepted)
        # Rejected prediction tokens are billed as completion tokens, beyond what the answer used.
        completion += rejected
    usage: dict[str, Any] = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": rejected,
        },
    }
    payload: dict[str, Any] = {
        "id": f"chatcmpl-{digest.hex()[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "choices": choices,
        "usage": usage,
        "system_fingerprint": "fp_simulator",
    }
    if plan.dialect == "openrouter":
        payload["provider"] = "Simulator"
        if isinstance(plan.body.get("usage"), dict) and plan.body["usage"].get("include"):
            usage["cost"] = _openrouter_cost(state, plan, completion)
    else:
        payload["service_tier"] = plan.service_tier
    return payload


def _responses_payload(state: SimulatorState, plan: Plan, digest: bytes, refused: bool) -> dict[str, Any]:
    hexed = digest.hex()[:24]
    output: list[dict[str, Any]] = []
    answer = Answer("", None, 0, 0, False)
    if not refused:
        answer = _answer(plan, digest, _output_words(digest, state.config.max_output_words))
    if answer.reasoning_tokens:
        output.append({"type": "reasoning", "id": f"rs_{hexed}", "summary": []})
    if refused:
        content: list[dict[str, Any]] = [{"type": "refusal", "refusal": "I can't help with that request."}]
        output.append(
            {"type": "message", "id": f"msg_{hexed}", "status": "completed", "role": "assistant", "content": content}
        )
    elif answer.call is not None:
        name, arguments = answer.call
        status = "incomplete" if answer.cut else "completed"
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{hexed}",
                "call_id": f"call_{hexed}",
                "name": name,
                "arguments": arguments,
                "status": status,
            }
        )
    elif answer.text or not answer.cut:
        content = [{"type": "output_text", "text": answer.text or "", "annotations": [], "logprobs": []}]
        status = "incomplete" if answer.cut else "completed"
        output.append(
            {"type": "message", "id": f"msg_{hexed}", "status": status, "role": "assistant", "content": content}
        )
    total_out = answer.tokens + answer.reasoning_tokens
    body = plan.body
    effort = (body.get("reasoning") or {}).get("effort")
    return {
        "id": f"resp_{hexed}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if answer.cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if answer.cut else None,
        "error": None,
        "model": plan.model,
        "output": output,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "reasoning": {"effort": effort or ("medium" if answer.reasoning_tokens else None), "summary": None},
        "store": body.get("store", True),
        "metadata": body.get("metadata") or {},
        "service_tier": plan.service_tier,
        "truncation": body.get("truncation", "disabled"),
        "user": body.get("user"),
        "usage": {
            "input_tokens": plan.prompt_tokens,
            "input_tokens_details": {"cached_tokens": plan.cached_tokens},
            "output_tokens": total_out,
            "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
            "total_tokens": plan.prompt_tokens + total_out,
        },
    }


def _messages_payload(state: SimulatorState, plan: Plan, digest: bytes, refused: bool) -> dict[str, Any]:
    hexed = digest.hex()[:24]
    content: list[dict[str, Any]] = []
    output_tokens = 0
    stop_reason, stop_sequence = "refusal", None
    if not refused:
        answer = _answer(plan, digest, _output_words(digest, state.config.max_output_words))
        output_tokens = answer.tokens + answer.reasoning_tokens
        if answer.reasoning_tokens:
            thinking = " ".join(_output_words(digest[::-1], 24))
            content.append({"type": "thinking", "thinking": thinking, "signature": f"sig_{hexed}"})
        if answer.call is not None:
            name, arguments = answer.call
            given = json.loads(arguments)
            tool_input = given if isinstance(given, dict) else {"value": given}  # Anthropic's input is an object
            content.append({"type": "tool_use", "id": f"toolu_{hexed}", "name": name, "input": tool_input})
            stop_reason = "tool_use"
        else:
            if answer.text:
                content.append({"type": "text", "text": answer.text})
            stop_sequence = answer.stop_sequence
            stop_reason = "max_tokens" if answer.cut else ("stop_sequence" if stop_sequence else "end_turn")
    written = plan.cache_write_tokens
    return {
        "id": f"msg_{hexed}",
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": plan.prompt_tokens - plan.cached_tokens - written,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": plan.cached_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0 if plan.cache_write_1h else written,
                "ephemeral_1h_input_tokens": written if plan.cache_write_1h else 0,
            },
            "service_tier": "standard",
        },
    }


def _plan(endpoint: str, path: str, body: dict[str, Any], state: SimulatorState) -> Plan:
    if endpoint == "messages":
        return _messages_plan(body, state)
    if endpoint == "responses":
        return _responses_plan(body, state)
    openrouter = path.startswith("/api/") or bool(OPENROUTER_FIELDS & set(body))
    return _chat_plan(body, state, openrouter=openrouter)


def _error(
    wire: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None, param: str | None = None
) -> web.Response:
    body: dict[str, Any]
    if wire == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
    elif wire == "openrouter":
        body = {"error": {"code": status, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": param, "code": kind if status != 400 else None}}
    return web.json_response(body, status=status, headers=headers)


async def _handle(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = request.app[STATE]
    state.requests += 1
    wire = "anthropic" if endpoint == "messages" else "openai"
    key = request.headers.get("authorization", "") or request.headers.get("x-api-key", "")
    if not key.replace("Bearer", "").strip():
        return _error(wire, 401, "authentication_error", "missing API key")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return _error(wire, 400, "invalid_request_error", "request body is not JSON")
    if not isinstance(body, dict):
        return _error(wire, 400, "invalid_request_error", "request body must be a JSON object")
    try:
        plan = _plan(endpoint, request.path, body, state)
    except WireRejection as exc:
        return _error(wire, exc.status, exc.kind, exc.message, param=exc.param)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        # An odd shape the checks above did not foresee is still the caller's error, never a 500.
        return _error(wire, 400, "invalid_request_error", f"could not read the request: {type(exc).__name__}: {exc}")
    if plan.dialect == "openrouter":
        refusal = _openrouter_price_refusal(state, plan)
        if refusal is not None:
            return refusal
    digest = hashlib.sha256(raw).digest()
    config = state.config
    rpm = state.bucket(key, "rpm", config.rpm) if config.rpm else None
    tpm = state.bucket(key, "tpm", config.tpm) if config.tpm else None
    fault = _fault_for(state, plan.marker_text, hashlib.sha256(plan.marker_text.encode()).hexdigest())
    wait = rpm.take(1) if rpm else 0.0
    estimate = plan.prompt_tokens + plan.cap * plan.n
    if not wait and tpm:
        wait = tpm.take(estimate)
        if wait and rpm:
            rpm.give_back(1)
    if wait or fault == "429":
        state.rate_limited += 1
        return _error(
            wire,
            429,
            "rate_limit_error",
            "Rate limit reached; retry after the indicated time",
            _limit_headers(wire, rpm, tpm, wait or 1.0),
        )
    await asyncio.sleep(_latency(config, state.rng))
    request_id = f"req_{digest.hex()[:24]}"
    id_header = {"request-id": request_id} if wire == "anthropic" else {"x-request-id": request_id}
    headers = {**_limit_headers(wire, rpm, tpm), **id_header}
    if fault == "stall":
        await asyncio.sleep(3600)
    if fault == "500":
        if wire == "anthropic":
            return _error(wire, 529, "overloaded_error", "Overloaded", headers)
        return _error(wire, 500, "server_error", "The server had an error processing your request", headers)
    if fault == "400":
        return _error(wire, 400, "invalid_request_error", "Invalid value for 'messages': simulated rejection", headers)
    refused = fault == "refuse"
    build = {"messages": _messages_payload, "responses": _responses_payload}.get(endpoint, _chat_payload)
    payload = build(state, plan, digest, refused)
    if tpm:
        used = payload["usage"].get("completion_tokens", payload["usage"].get("output_tokens", 0))
        tpm.give_back(max(0, plan.cap * plan.n - int(used)))
    data = json.dumps(payload).encode()
    if fault == "malformed":
        return web.Response(
            body=data[: len(data) // 2] + b"<html>oops", content_type="application/json", headers=headers
        )
    if fault in ("truncate", "trickle"):
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        if fault == "truncate":
            await response.write(data[: len(data) // 2])
            # Close the connection mid-body: the client sees fewer bytes than Content-Length.
            assert request.transport is not None
            request.transport.close()
            return response
        step = max(1, len(data) // 20)
        for i in range(0, len(data), step):
            await response.write(data[i : i + step])
            await asyncio.sleep(config.trickle_seconds / 20)
        await response.write_eof()
        return response
    return web.Response(body=data, content_type="application/json", headers=headers)


async def _chat(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "chat")


async def _responses(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "responses")


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "messages")


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"requests": state.requests, "rate_limited": state.rate_limited})


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE] = SimulatorState(config or SimulatorConfig())
    for prefix in ("/v1", "/api/v1"):
        app.router.add_post(f"{prefix}/chat/completions", _chat)
        app.router.add_post(f"{prefix}/responses", _responses)
        app.router.add_post(f"{prefix}/messages", _messages)
    app.router.add_get("/_stats", _stats)
    return app


def serve(config: SimulatorConfig, *, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Run the simulator in the foreground until interrupted."""
    # A short shutdown: a stalled request sleeps for an hour and would hold a graceful stop for a minute.
    web.run_app(
        build_app(config), host=host, port=port, print=None, access_log=None, handle_signals=True, shutdown_timeout=0.25
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_simulator(config: SimulatorConfig, *, port: int | None = None) -> Iterator[str]:
    """Start the simulator in its own process; yields its base URL (`http://127.0.0.1:PORT/v1`)."""
    port = port or _free_port()
    args = [
        sys.executable,
        "-m",
        "batchrouter.cli",
        "simulate",
        "--port",
        str(port),
        "--config-json",
        config.model_dump_json(),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the provider simulator exited at start: {err[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/_stats", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the provider simulator did not answer on port {port} within 30 s") from None
                time.sleep(0.05)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
