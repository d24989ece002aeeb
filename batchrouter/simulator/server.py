"""A provider simulator: a real HTTP server speaking the OpenAI and Anthropic wire formats.

Stands in for the providers in the demo, tests and benchmarks. Outputs are deterministic (a digest
of what the request asks picks the words and the length: the same question gets the same answer
online, on flex and in a provider batch) and usage is billed by the providers' published
rules (`batchrouter.simulator.billing`). Endpoints, under `/v1` and OpenRouter's `/api/v1`:

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
  (KIND: `500`, `400`, `refuse`, `stall`, `truncate`, `malformed`, `trickle`, `429`, and `flexbusy`: a
  flex request refused for capacity), or only on its first N attempts with `[[sim:KIND*N]]`.

`GET /_stats` counts what it served: `requests`, `rate_limited`, and the online requests (chat,
responses, messages) being answered now (`in_flight`) and the most ever answered at once
(`max_in_flight`), from the request's arrival to its last byte (a stalled request counts until
its hour is up, as a server still working on it would).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
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

from batchrouter.core.config import SimulatorConfig
from batchrouter.simulator import billing as bill
from batchrouter.simulator import models
from batchrouter.simulator.rejection import WireRejection
from batchrouter.simulator.requests import Context, Plan, plan_for, prediction_text

_MARKER = re.compile(r"\[\[sim:([a-z0-9]+)(?:\*(\d+))?\]\]")
_WORDS = (
    "alpha beta gamma delta summary result answer the of and report item value clear short final note data "
    "model output token request batch route provider receipt quote reserve settle deliver"
).split()
DEFAULT_CAP = 4096
MAX_OUTPUT_UNKNOWN = 1_000_000  # a model outside the catalog: no provider writes more in one answer
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
    # Online requests being answered now, and the most there ever were at once (`/_stats`).
    in_flight: int = 0
    max_in_flight: int = 0
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    prices: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    max_output: dict[str, int] = field(default_factory=dict)
    cache: bill.PrefixCache = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.cache = bill.PrefixCache(self.config.prompt_cache_ttl_s)
        from batchrouter.core.catalog import load_catalog

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
        wants_logprobs = plan.body.get("logprobs") and answer.text and not models.is_reasoning_model(plan.model)
        logprobs = _logprobs(answer.text or "", d, top) if wants_logprobs else None
        choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
    accepted = rejected = 0
    predicted = prediction_text(plan.body)
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


def error_body(wire: str, status: int, kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The provider's error object for `wire` (`openai`, `anthropic` or `openrouter`)."""
    if wire == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    if wire == "openrouter":
        return {"error": {"code": status, "message": message}}
    return {"error": {"message": message, "type": kind, "param": param, "code": kind if status != 400 else None}}


# Fields that say how a request is served, billed or kept, not what is asked: the same question gets the same
# answer online, on flex or in a provider batch, as it would from one model.
_NOT_ASKED = frozenset(("service_tier", "metadata", "store", "user", "safety_identifier", "prompt_cache_key",
                        "prompt_cache_retention", "stream", "stream_options", "background"))  # fmt: skip


def answer_digest(body: dict[str, Any]) -> bytes:
    """The digest an answer is drawn from: the request's own content, whatever lane or tier carries it."""
    asked = {k: v for k, v in body.items() if k not in _NOT_ASKED}
    return hashlib.sha256(json.dumps(asked, sort_keys=True, separators=(",", ":")).encode()).digest()


def _error(
    wire: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None, param: str | None = None
) -> web.Response:
    return web.json_response(error_body(wire, status, kind, message, param), status=status, headers=headers)


def answer_line(state: SimulatorState, endpoint: str, body: Any, context: Context) -> tuple[int, dict[str, Any]]:
    """A provider-batch line answered by the online rules: (status code, response body).

    `context` holds the batch's own prompt cache. Transport faults (stalls, truncation) do not exist in
    a batch; `[[sim:500]]`, `[[sim:400]]` and `[[sim:refuse]]` markers answer as they do online.
    """
    wire = "anthropic" if endpoint == "messages" else "openai"
    if not isinstance(body, dict):
        return 400, error_body(wire, 400, "invalid_request_error", "request body must be a JSON object")
    path = {"messages": "/v1/messages", "responses": "/v1/responses"}.get(endpoint, "/v1/chat/completions")
    try:
        plan = plan_for(endpoint, path, body, context)
    except WireRejection as exc:
        return exc.status, error_body(wire, exc.status, exc.kind, exc.message, exc.param)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        message = f"could not read the request: {type(exc).__name__}: {exc}"
        return 400, error_body(wire, 400, "invalid_request_error", message)
    marker = _MARKER.search(plan.marker_text)
    fault = marker.group(1) if marker else None
    if fault == "500":
        if wire == "anthropic":
            return 529, error_body(wire, 529, "overloaded_error", "Overloaded")
        return 500, error_body(wire, 500, "server_error", "The server had an error processing your request")
    if fault == "400":
        return 400, error_body(wire, 400, "invalid_request_error", "Invalid value for 'messages': simulated rejection")
    build = {"messages": _messages_payload, "responses": _responses_payload}.get(endpoint, _chat_payload)
    return 200, build(state, plan, answer_digest(body), fault == "refuse")


async def _handle(request: web.Request, endpoint: str) -> web.StreamResponse:
    state = request.app[STATE]
    state.requests += 1
    state.in_flight += 1  # one event loop: no lock needed
    state.max_in_flight = max(state.max_in_flight, state.in_flight)
    try:
        return await _answer_request(request, state, endpoint)
    finally:
        state.in_flight -= 1


async def _answer_request(request: web.Request, state: SimulatorState, endpoint: str) -> web.StreamResponse:
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
        plan = plan_for(endpoint, request.path, body, state)
    except WireRejection as exc:
        return _error(wire, exc.status, exc.kind, exc.message, param=exc.param)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        # An odd shape the checks above did not foresee is still the caller's error, never a 500.
        return _error(wire, 400, "invalid_request_error", f"could not read the request: {type(exc).__name__}: {exc}")
    if plan.dialect == "openrouter":
        refusal = _openrouter_price_refusal(state, plan)
        if refusal is not None:
            return refusal
    digest = answer_digest(body)
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
    flex = plan.service_tier == "flex"
    busy = fault == "flexbusy" or (config.flex_unavailable_rate and state.rng.random() < config.flex_unavailable_rate)
    if flex and busy:
        if rpm:
            rpm.give_back(1)
        if tpm:
            tpm.give_back(estimate)
        return _error(wire, 429, "resource_unavailable", "Resource unavailable: flex capacity is exhausted; "
                      "retry later or send the request at the default service tier")  # fmt: skip
    await asyncio.sleep(_latency(config, state.rng) * (config.flex_latency_factor if flex else 1.0))
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
    return web.json_response({"requests": state.requests, "rate_limited": state.rate_limited,
                              "in_flight": state.in_flight, "max_in_flight": state.max_in_flight,
                              "pid": os.getpid()})  # fmt: skip


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE] = SimulatorState(config or SimulatorConfig())
    for prefix in ("/v1", "/api/v1"):
        app.router.add_post(f"{prefix}/chat/completions", _chat)
        app.router.add_post(f"{prefix}/responses", _responses)
        app.router.add_post(f"{prefix}/messages", _messages)
    app.router.add_get("/_stats", _stats)
    # Imported here: the batch modules answer their lines with this module's `answer_line`.
    from batchrouter.simulator import anthropic_batches, openai_batches

    openai_batches.add_routes(app)
    anthropic_batches.add_routes(app)
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
    args = [sys.executable, "-m", "batchrouter.simulator", str(port), config.model_dump_json()]
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
