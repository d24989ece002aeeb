"""OpenAI Chat Completions (`POST /v1/chat/completions`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from batchrouter.core import wirejson
from batchrouter.core.errors import RefusedError as RefusedError
from batchrouter.core.errors import TransientError
from batchrouter.execution.providers.base import (
    Completion,
    PreparedRequest,
    ProviderAdapter,
    RateLimits,
    RequestItem,
    classify,
    load_json,
    openai_rate_limits,
)


class OpenAIAdapter(ProviderAdapter):
    default_base_url: ClassVar[str | None] = "https://api.openai.com/v1"

    def make_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, item: RequestItem, upstream: str) -> dict[str, Any]:
        body: dict[str, Any] = {**(item.params or {}), "model": upstream, "messages": item.messages}
        body["max_completion_tokens"] = item.max_tokens
        if item.n > 1:
            body["n"] = item.n
        if item.temperature is not None:
            body["temperature"] = item.temperature
        return body

    def build(self, item: RequestItem, upstream: str) -> PreparedRequest:
        body = wirejson.dumps(self.body(item, upstream))
        return PreparedRequest(f"{self.base_url}/chat/completions", self.headers(), body)

    def parse(self, status: int, headers: Mapping[str, str], body: bytes) -> Completion:
        request_id = self.request_id(headers)
        if status >= 300:
            raise classify(status, headers, body)
        data = load_json(body, request_id=request_id)
        try:
            choice = data["choices"][0]
            message = choice["message"]
            usage = data.get("usage") or {}
            # A wrong shape (a null message, a usage that is not an object) must be an error, not a crash.
            refusal = message.get("refusal")
            input_tokens = int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
            output_tokens = int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
            details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
            cached = int(details.get("cached_tokens", 0) or 0)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise TransientError("malformed_body", f"response lacks choices[0].message or usage ({exc})") from exc
        if refusal:
            raise RefusedError(
                "refused",
                str(refusal),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                request_id=request_id or data.get("id"),
            )
        return Completion(
            text=message.get("content") or "",
            finish_reason=str(choice.get("finish_reason") or "stop"),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            request_id=request_id or data.get("id"),
            reported_cost_usd_micros=self.reported_cost(usage),
            choices=data["choices"] if isinstance(data["choices"], list) else None,
            service_tier=data.get("service_tier") if isinstance(data.get("service_tier"), str) else None,
        )

    def reported_cost(self, usage: Mapping[str, Any]) -> int | None:
        return None

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimits:
        return openai_rate_limits(headers)
