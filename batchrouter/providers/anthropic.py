"""Anthropic Messages (`POST /v1/messages`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchrouter.errors import TransientError
from batchrouter.providers.base import (
    Completion,
    PreparedRequest,
    ProviderAdapter,
    RateLimits,
    RequestItem,
    anthropic_rate_limits,
    classify,
    load_json,
)
from batchrouter.providers.openai import RefusedError

API_VERSION = "2023-06-01"
# Anthropic's stop reasons, in OpenAI's vocabulary, so outputs read the same whatever the route.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


class AnthropicAdapter(ProviderAdapter):
    default_base_url = "https://api.anthropic.com/v1"

    def build(self, item: RequestItem, upstream: str) -> PreparedRequest:
        system = "\n\n".join(m["content"] for m in item.messages if m["role"] in ("system", "developer"))
        messages = [
            {"role": m["role"], "content": m["content"]} for m in item.messages if m["role"] in ("user", "assistant")
        ]
        params = {k: v for k, v in (item.params or {}).items() if k in ("top_p", "top_k", "stop_sequences", "metadata")}
        body: dict[str, Any] = {**params, "model": upstream, "max_tokens": item.max_tokens, "messages": messages}
        if system:
            body["system"] = system
        if item.temperature is not None:
            body["temperature"] = min(item.temperature, 1.0)  # Anthropic's range is 0..1
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return PreparedRequest(f"{self.base_url}/messages", headers, json.dumps(body, ensure_ascii=False).encode())

    def parse(self, status: int, headers: Mapping[str, str], body: bytes) -> Completion:
        request_id = self.request_id(headers)
        if status >= 300:
            raise classify(status, headers, body)
        data = load_json(body, request_id=request_id)
        try:
            usage = data["usage"]
            text = "".join(part.get("text", "") for part in data["content"] if part.get("type") == "text")
            stop = data.get("stop_reason") or "end_turn"
            input_tokens = int(usage.get("input_tokens", 0) or 0)
            cache_read = int(usage.get("cache_read_input_tokens", 0) or 0)
            cache_write = int(usage.get("cache_creation_input_tokens", 0) or 0)
            output_tokens = int(usage.get("output_tokens", 0) or 0)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise TransientError("malformed_body", f"response lacks content or usage ({exc})") from exc
        if stop == "refusal":
            raise RefusedError(
                "refused",
                "the model declined to answer (stop_reason: refusal)",
                input_tokens=input_tokens + cache_read + cache_write,
                output_tokens=output_tokens,
                request_id=request_id or data.get("id"),
            )
        return Completion(
            text=text,
            finish_reason=_FINISH.get(stop, stop),
            input_tokens=input_tokens + cache_read + cache_write,
            output_tokens=output_tokens,
            cached_tokens=cache_read,
            request_id=request_id or data.get("id"),
        )

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimits:
        return anthropic_rate_limits(headers)
