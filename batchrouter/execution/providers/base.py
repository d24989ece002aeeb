"""What every provider adapter does: build a request from an item, parse the answer, classify errors.

Adapters are pure: they turn an item into bytes and bytes into a `Completion` or a `ProviderError`.
The dispatcher owns the network, the rate limits and the retries.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from batchrouter.core import wirejson
from batchrouter.core.config import ProviderConfig
from batchrouter.core.errors import ProviderError, RateLimitedError, TerminalError, TransientError


@dataclass(frozen=True)
class RequestItem:
    """One item as the dispatcher hands it to an adapter."""

    item_id: str
    messages: list[dict[str, Any]]
    max_tokens: int  # per choice
    temperature: float | None = None
    params: dict[str, Any] | None = None  # passed-on body fields (`request_fields.PASSED_FIELDS`)
    n: int = 1
    max_price: tuple[int, int] | None = None  # (input, output) pico-dollars per token the reserve allows


@dataclass(frozen=True)
class PreparedRequest:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Completion:
    """A successful answer, normalised across wire formats."""

    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    request_id: str | None = None
    reported_cost_usd_micros: int | None = None
    # Every choice in OpenAI's shape ({index, message: {role, content, tool_calls?}, finish_reason}),
    # whatever the wire, so tool calls and `n` choices reach the outputs.
    choices: list[dict[str, Any]] | None = None
    service_tier: str | None = None  # the tier that served it, where the provider says


@dataclass(frozen=True)
class RateLimits:
    """What the provider's headers say about its limits (None where it says nothing)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None


class ProviderAdapter(ABC):
    """Base of the adapters; one subclass per wire format or provider."""

    default_base_url: ClassVar[str | None] = None

    def __init__(self, name: str, config: ProviderConfig, *, api_key: str | None, base_url: str | None = None) -> None:
        self.name = name
        self.config = config
        self.api_key = api_key
        url = base_url or config.base_url or self.default_base_url
        if not url:
            raise TerminalError("missing_base_url", f"provider {name} has no base_url; set providers.{name}.base_url")
        self.base_url = url.rstrip("/")
        self._headers: dict[str, str] | None = None

    def headers(self) -> dict[str, str]:
        """The headers every request carries, built once: they depend only on the key (callers must not
        change them; the dispatcher converts them once per route, not once per request)."""
        if self._headers is None:
            self._headers = self.make_headers()
        return self._headers

    @abstractmethod
    def make_headers(self) -> dict[str, str]:
        """The headers of `headers`: content type, the key, the wire's version."""

    @abstractmethod
    def build(self, item: RequestItem, upstream: str) -> PreparedRequest:
        """The HTTP request for `item` on model `upstream`."""

    @abstractmethod
    def parse(self, status: int, headers: Mapping[str, str], body: bytes) -> Completion:
        """A 2xx body as a `Completion`; raises a `ProviderError` for anything else."""

    @abstractmethod
    def rate_limits(self, headers: Mapping[str, str]) -> RateLimits:
        """The limits the response headers announce."""

    def request_id(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-request-id") or headers.get("request-id")


def load_json(body: bytes, *, request_id: str | None) -> Any:
    """Parse a response body; a cut or garbled body is transient (the next attempt may be whole)."""
    try:
        return wirejson.loads(body)
    except ValueError as exc:
        code = "truncated_body" if body.lstrip()[:1] in (b"{", b"[") else "malformed_body"
        raise TransientError(code, f"response body is not valid JSON ({exc}); request id {request_id}") from exc


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        from datetime import UTC, datetime
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def error_message(body: bytes) -> str:
    """The provider's own error message, whatever its error shape."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace")
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)
    return str(err)


# A 429 that is not a rate limit: OpenAI's flex tier out of capacity (retry at the standard tier).
CAPACITY_REFUSED = "resource_unavailable"


def error_code(body: bytes) -> str | None:
    """The provider's own error code (`error.code`, else `error.type`), when its body has one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None
    code = err.get("code") or err.get("type")
    return code if isinstance(code, str) else None


def classify(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """The error a non-2xx answer means: rate-limited, transient or terminal, with the provider's words.
    A 429 is `rate_limited`, except a capacity refusal, which keeps its code (`CAPACITY_REFUSED`)."""
    message = error_message(body)
    if status == 429:
        code = CAPACITY_REFUSED if error_code(body) == CAPACITY_REFUSED else "rate_limited"
        return RateLimitedError(code, message, status=429, retry_after_s=retry_after_seconds(headers))
    if status in (408, 409, 425) or status >= 500:
        code = "overloaded" if status == 529 else f"http_{status}"
        return TransientError(code, message, status=status)
    if status in (401, 403):
        return TerminalError("unauthorized", message, status=status)
    if status == 404:
        return TerminalError("not_found", message, status=status)
    return TerminalError(f"http_{status}", message, status=status)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def openai_rate_limits(headers: Mapping[str, str]) -> RateLimits:
    return RateLimits(
        requests_per_minute=_int(headers, "x-ratelimit-limit-requests"),
        tokens_per_minute=_int(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int(headers, "x-ratelimit-remaining-tokens"),
    )


def anthropic_rate_limits(headers: Mapping[str, str]) -> RateLimits:
    return RateLimits(
        requests_per_minute=_int(headers, "anthropic-ratelimit-requests-limit"),
        tokens_per_minute=_int(headers, "anthropic-ratelimit-tokens-limit"),
        remaining_requests=_int(headers, "anthropic-ratelimit-requests-remaining"),
        remaining_tokens=_int(headers, "anthropic-ratelimit-tokens-remaining"),
    )
