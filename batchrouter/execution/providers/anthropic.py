"""Anthropic Messages (`POST /v1/messages`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchrouter.core import wirejson
from batchrouter.core.errors import TransientError
from batchrouter.execution.providers.base import (
    Completion,
    PreparedRequest,
    ProviderAdapter,
    RateLimits,
    RequestItem,
    anthropic_rate_limits,
    classify,
    load_json,
)
from batchrouter.execution.providers.openai import RefusedError

API_VERSION = "2023-06-01"
# Anthropic's stop reasons, in OpenAI's vocabulary, so outputs read the same whatever the route.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


class AnthropicAdapter(ProviderAdapter):
    """Chat Completions items in Anthropic's Messages form (the mapping is `request_fields`' table).

    system and developer messages -> `system`; image parts -> image blocks (base64 or URL source);
    assistant `tool_calls` -> `tool_use` blocks; `tool` messages -> `tool_result` blocks in a user turn;
    `tools` -> `{name, description, input_schema}`; `tool_choice` and `parallel_tool_calls` -> Anthropic's
    `tool_choice`; `stop` -> `stop_sequences`; `user` -> `metadata.user_id`; `top_p` as is. Routing
    sends nothing else here (`WIRE_FEATURES["anthropic"]`).
    """

    default_base_url = "https://api.anthropic.com/v1"

    def make_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": API_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def build(self, item: RequestItem, upstream: str) -> PreparedRequest:
        body = anthropic_body(item, upstream)
        data = wirejson.dumps(body)
        return PreparedRequest(f"{self.base_url}/messages", self.headers(), data)

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
        finish = _FINISH.get(stop, stop)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls = [
            {
                "id": p.get("id"),
                "type": "function",
                "function": {"name": p.get("name"), "arguments": json.dumps(p.get("input", {}), ensure_ascii=False)},
            }
            for p in data["content"]
            if p.get("type") == "tool_use"
        ]
        if calls:
            message["tool_calls"] = calls
        return Completion(
            text=text,
            finish_reason=finish,
            input_tokens=input_tokens + cache_read + cache_write,
            output_tokens=output_tokens,
            cached_tokens=cache_read,
            request_id=request_id or data.get("id"),
            choices=[{"index": 0, "message": message, "finish_reason": finish}],
        )

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimits:
        return anthropic_rate_limits(headers)


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    spec = part["image_url"]
    url = spec if isinstance(spec, str) else spec["url"]
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if part.get("type") == "image_url":
            blocks.append(_image_block(part))
        elif isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "refusal":
            blocks.append({"type": "text", "text": str(part.get("refusal", ""))})
    return blocks


def _text(content: Any) -> str:
    return "".join(b["text"] for b in _blocks(content) if b["type"] == "text")


def _turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages -> Anthropic turns, same-role neighbours merged (Anthropic wants them alternating)."""
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role in ("system", "developer"):
            continue
        if role in ("tool", "function"):
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id") or m.get("name"),
                    "content": _text(m.get("content")),
                }
            ]
            role = "user"
        elif role == "assistant":
            blocks = _blocks(m.get("content"))
            for call in m.get("tool_calls") or []:
                fn = call.get("function", {})
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = {"arguments": fn.get("arguments")}
                blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args})
        else:
            blocks = _blocks(m.get("content"))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a turn of one text block reads as the plain string it was
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return turns


def _tools(params: dict[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for tool in params.get("tools") or []:
        fn = tool.get("function", tool)
        tools.append(
            {
                "name": fn.get("name"),
                "description": fn.get("description", ""),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    for fn in params.get("functions") or []:
        tools.append(
            {
                "name": fn.get("name"),
                "description": fn.get("description", ""),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return tools


def _tool_choice(params: dict[str, Any]) -> dict[str, Any] | None:
    choice = params.get("tool_choice", params.get("function_call"))
    out: dict[str, Any] | None
    if choice in (None, "auto"):
        out = {"type": "auto"} if params.get("parallel_tool_calls") is False else None
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict):
        name = choice.get("function", {}).get("name") if "function" in choice else choice.get("name")
        out = {"type": "tool", "name": name}
    else:
        out = None
    if out is not None and params.get("parallel_tool_calls") is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def anthropic_body(item: RequestItem, upstream: str) -> dict[str, Any]:
    """The Messages API body for `item` on model `upstream`."""
    params = item.params or {}
    system = "\n\n".join(_text(m.get("content")) for m in item.messages if m["role"] in ("system", "developer"))
    body: dict[str, Any] = {"model": upstream, "max_tokens": item.max_tokens, "messages": _turns(item.messages)}
    if system:
        body["system"] = system
    if item.temperature is not None:
        body["temperature"] = item.temperature  # routing sends only 0..1 here (temperature_above_1)
    if params.get("top_p") is not None:
        body["top_p"] = params["top_p"]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("user"):
        body["metadata"] = {"user_id": params["user"]}
    tools = _tools(params)
    if tools:
        body["tools"] = tools
        choice = _tool_choice(params)
        if choice is not None:
            body["tool_choice"] = choice
    return body
