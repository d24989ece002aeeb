"""A provider simulator: a real HTTP server speaking the OpenAI and Anthropic wire formats.

Stands in for the providers in the demo, tests and benchmarks. Outputs are deterministic (a digest
of the request picks the words and the length), usage is realistic (OpenAI prompt tokens counted
exactly as OpenAI bills them; Anthropic tokens as a tokenizer 1.2x o200k_base would give), and
limits and faults are configurable:

- latency: fixed, uniform or log-normal around `latency_ms`;
- requests and tokens per minute, enforced with token buckets like the providers' (a minute's
  allowance refilled continuously, a burst of one second's worth); over them: 429 with
  Retry-After and the provider's rate-limit headers (`x-ratelimit-*` or `anthropic-ratelimit-*`);
- faults, each with a probability: 5xx (529 `overloaded_error` on Anthropic), stalls that never
  answer, truncated bodies, malformed JSON, slow trickle of the body;
- per-item faults on demand: a prompt containing `[[sim:KIND]]` gets that fault on every attempt
  (KIND: `500`, `400`, `refuse`, `stall`, `truncate`, `malformed`, `trickle`, `429`), or only on its
  first N attempts with `[[sim:KIND*N]]`.

OpenRouter-style requests (with `usage: {"include": true}`) get `usage.cost` in USD, priced from the
catalog entry whose upstream name is the requested model.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import web

from batchrouter.config import SimulatorConfig
from batchrouter.tokens import count_text

_MARKER = re.compile(r"\[\[sim:([a-z0-9]+)(?:\*(\d+))?\]\]")
_WORDS = (
    "alpha beta gamma delta summary result answer the of and report item value clear short final note data "
    "model output token request batch route provider receipt quote reserve settle deliver"
).split()
ANTHROPIC_TOKEN_RATIO = Decimal("1.2")


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

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        from batchrouter.catalog import load_catalog

        for entry in load_catalog().entries:
            if entry.provider == "openrouter":
                self.prices[entry.upstream] = (entry.input_usd_per_mtok, entry.output_usd_per_mtok)

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


def _output_words(digest: bytes, limit: int) -> list[str]:
    n = 8 + digest[0] % max(1, limit - 8)
    return [_WORDS[digest[1 + i % 30] % len(_WORDS)] for i in range(n)]


def _truncate_to_tokens(words: list[str], max_tokens: int, ratio: Decimal) -> tuple[str, int, bool]:
    """Output text within `max_tokens` (under the simulated tokenizer), its tokens, and whether cut."""
    text = " ".join(words)
    tokens = _scaled(count_text(text, "o200k_base"), ratio)
    if tokens <= max_tokens:
        return text, tokens, False
    keep = words[: max(1, int(len(words) * max_tokens / tokens))]
    while keep:
        text = " ".join(keep)
        tokens = _scaled(count_text(text, "o200k_base"), ratio)
        if tokens <= max_tokens:
            return text, tokens, True
        keep = keep[:-1]
    return "", 0, True


def _scaled(tokens: int, ratio: Decimal) -> int:
    return int((tokens * ratio).to_integral_value(rounding="ROUND_CEILING"))


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _openai_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 3
    for m in messages:
        total += (
            3
            + count_text(str(m.get("role", "")), "o200k_base")
            + count_text(_message_text(m.get("content")), "o200k_base")
        )
        if m.get("name"):
            total += 1 + count_text(str(m["name"]), "o200k_base")
    return total


def _anthropic_input_tokens(system: str, messages: list[dict[str, Any]]) -> int:
    raw = count_text(system, "o200k_base") + sum(
        count_text(_message_text(m.get("content")), "o200k_base") for m in messages
    )
    return _scaled(raw, ANTHROPIC_TOKEN_RATIO) + 4 * len(messages) + (3 if system else 0)


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


def _error(wire: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if wire == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return web.json_response(body, status=status, headers=headers)


async def _handle(request: web.Request, wire: str) -> web.StreamResponse:
    state: SimulatorState = request.app["state"]
    state.requests += 1
    key = request.headers.get("authorization", "") or request.headers.get("x-api-key", "")
    if not key.replace("Bearer", "").strip():
        return _error(wire, 401, "authentication_error", "missing API key")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(wire, 400, "invalid_request_error", "request body is not JSON")
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages:
        return _error(wire, 400, "invalid_request_error", "model and a non-empty messages array are required")
    system = _message_text(body.get("system", "")) if wire == "anthropic" else ""
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 4096
    if wire == "anthropic" and "max_tokens" not in body:
        return _error(wire, 400, "invalid_request_error", "max_tokens: Field required")
    all_text = system + "\n".join(_message_text(m.get("content")) for m in messages)
    digest = hashlib.sha256(raw).digest()
    prompt_tokens = (
        _anthropic_input_tokens(system, messages) if wire == "anthropic" else _openai_prompt_tokens(messages)
    )
    config = state.config
    rpm = state.bucket(key, "rpm", config.rpm) if config.rpm else None
    tpm = state.bucket(key, "tpm", config.tpm) if config.tpm else None
    fault = _fault_for(state, all_text, hashlib.sha256(all_text.encode()).hexdigest())
    wait = rpm.take(1) if rpm else 0.0
    estimate = prompt_tokens + int(max_tokens)
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
    ratio = ANTHROPIC_TOKEN_RATIO if wire == "anthropic" else Decimal(1)
    text, completion_tokens, cut = _truncate_to_tokens(
        _output_words(digest, config.max_output_words), int(max_tokens), ratio
    )
    if tpm:
        tpm.give_back(max(0, int(max_tokens) - completion_tokens))
    refused = fault == "refuse"
    if wire == "anthropic":
        payload: dict[str, Any] = {
            "id": f"msg_{digest.hex()[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [] if refused else [{"type": "text", "text": text}],
            "stop_reason": "refusal" if refused else ("max_tokens" if cut else "end_turn"),
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": 0 if refused else completion_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
    else:
        message: dict[str, Any] = {"role": "assistant", "content": None if refused else text, "refusal": None}
        if refused:
            message["refusal"] = "I can't help with that request."
        payload = {
            "id": f"chatcmpl-{digest.hex()[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "stop" if refused else ("length" if cut else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": 0 if refused else completion_tokens,
                "total_tokens": prompt_tokens + (0 if refused else completion_tokens),
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            "system_fingerprint": "fp_simulator",
        }
        if isinstance(body.get("usage"), dict) and body["usage"].get("include"):
            price_in, price_out = state.prices.get(model, (Decimal("0.15"), Decimal("0.60")))
            cost = (prompt_tokens * price_in + completion_tokens * price_out) / 10**6
            payload["usage"]["cost"] = float(cost)
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
    return await _handle(request, "openai")


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "anthropic")


async def _stats(request: web.Request) -> web.Response:
    state: SimulatorState = request.app["state"]
    return web.json_response({"requests": state.requests, "rate_limited": state.rate_limited})


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app["state"] = SimulatorState(config or SimulatorConfig())
    for prefix in ("/v1", "/api/v1"):
        app.router.add_post(f"{prefix}/chat/completions", _chat)
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
