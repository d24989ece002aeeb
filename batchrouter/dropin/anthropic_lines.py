"""Anthropic's Message Batch requests in, and its results JSONL out.

In: `{"requests": [{"custom_id", "params": {Messages API params}}]}` checked the way Anthropic
checks it (custom_id 1-64 of `[a-zA-Z0-9_-]`, unique; `model`, `max_tokens`, `messages` present),
each problem naming `requests[i]` and its custom_id, then written as one OpenAI chat-completions
batch line per request: the manifest format BatchRouter reads (system first as a system message,
`stop_sequences` as `stop`, `metadata.user_id` as `user`, image blocks as `image_url` parts).

Out: one line per request, keyed by custom_id, whatever provider or lane answered it:
    {"custom_id", "result": {"type": "succeeded", "message": {Anthropic Message}}}
    {"custom_id", "result": {"type": "errored", "error": {"type": "error", "error": {"type", "message"}}}}
    {"custom_id", "result": {"type": "canceled"}} | {"custom_id", "result": {"type": "expired"}}
A succeeded answer (every provider's answer is kept in OpenAI's chat shape) becomes a Message: text
and tool calls as content blocks, `finish_reason` as `stop_reason`, the receipt's tokens as usage.
Each line carries `batchrouter` (route, provider, lane, cost) beside Anthropic's keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from batchrouter.core.batch_info import BatchInfo
from batchrouter.core.errors import InvalidRequest
from batchrouter.core.storage import Storage
from batchrouter.dropin.answers import answered_rows
from batchrouter.dropin.openai_lines import chat_completion

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
REQUIRED = ("model", "max_tokens", "messages")
# Messages API params this face passes on, and their chat-completions name.
PASSED = {"model": "model", "max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
          "stop_sequences": "stop", "tools": "tools", "tool_choice": "tool_choice"}  # fmt: skip
IGNORED = frozenset({"stream"})  # false is the only value a batch allows; checked below
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
               "content_filter": "refusal"}  # fmt: skip
ANTHROPIC_STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"})


# -- requests in ------------------------------------------------------------------------------------
def _where(index: int, custom_id: object) -> str:
    return f"requests[{index}]" + (f" (custom_id {custom_id!r})" if isinstance(custom_id, str) else "")


def _block(block: Any, where: str) -> Any:
    """One Anthropic content block as a chat-completions content part."""
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where}: a content block must be an object", param="requests")
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        elif source.get("type") == "url":
            url = str(source.get("url", ""))
        else:
            raise InvalidRequest(f"{where}: image source type {source.get('type')!r}; use 'base64' or 'url'",
                                 param="requests")  # fmt: skip
        return {"type": "image_url", "image_url": {"url": url}}
    raise InvalidRequest(f"{where}: content block type {kind!r} is not one BatchRouter's drop-in runs; send "
                         "'text' and 'image' blocks", param="requests")  # fmt: skip


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: content must be a string or a list of content blocks", param="requests")
    parts = [_block(b, where) for b in content]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tools(tools: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest(f"{where}.params.tools: a list of tools", param="requests")
    return [{"type": "function", "function": {"name": t.get("name"), "description": t.get("description", ""),
                                              "parameters": t.get("input_schema", {})}}
            for t in tools if isinstance(t, dict)]  # fmt: skip


def _tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if kind == "tool" and isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind), "auto")


def chat_body(params: dict[str, Any], where: str) -> dict[str, Any]:
    """A Messages API request as a chat-completions body (the manifest's line body)."""
    missing = [k for k in REQUIRED if k not in params]
    if missing:
        raise InvalidRequest(f"{where}.params: {', '.join(missing)} missing; a Messages request needs "
                             f"{', '.join(REQUIRED)}", param="requests")  # fmt: skip
    unknown = sorted(set(params) - set(PASSED) - IGNORED - {"messages", "system", "metadata"})
    if unknown:
        raise InvalidRequest(f"{where}.params.{unknown[0]}: not a param BatchRouter's drop-in passes on; remove it "
                             f"(it runs {', '.join(sorted({*PASSED, 'messages', 'system', 'metadata'}))})",
                             param="requests")  # fmt: skip
    if params.get("stream"):
        raise InvalidRequest(f"{where}.params.stream: a batch request cannot stream; remove it", param="requests")
    if not isinstance(params["messages"], list) or not params["messages"]:
        raise InvalidRequest(f"{where}.params.messages: a non-empty list of messages", param="requests")
    messages: list[dict[str, Any]] = []
    if params.get("system"):
        messages.append({"role": "system", "content": _content(params["system"], f"{where}.params.system")})
    for n, message in enumerate(params["messages"]):
        at = f"{where}.params.messages[{n}]"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"{at}: a message is an object whose role is 'user' or 'assistant'", param="requests")
        messages.append({"role": message["role"], "content": _content(message.get("content"), at)})
    body: dict[str, Any] = {"messages": messages}
    for key, name in PASSED.items():
        if key in params:
            body[name] = params[key]
    if "tools" in params:
        body["tools"] = _tools(params["tools"], where)
    if "tool_choice" in params:
        body["tool_choice"] = _tool_choice(params["tool_choice"])
    user = (params.get("metadata") or {}).get("user_id") if isinstance(params.get("metadata"), dict) else None
    if user:
        body["user"] = str(user)
    return body


def manifest(requests: list[dict[str, Any]]) -> bytes:
    """The create body's requests as BatchRouter's JSONL manifest (the same requests: the same bytes).

    Raises:
        InvalidRequest: no requests, too many, or one is malformed (named by its index and custom_id).
    """
    if not requests:
        raise InvalidRequest("requests: give at least one request", param="requests")
    if len(requests) > MAX_REQUESTS:
        raise InvalidRequest(f"requests: {len(requests)} requests; a batch holds at most {MAX_REQUESTS:,}",
                             param="requests")  # fmt: skip
    seen: dict[str, int] = {}
    lines = []
    for index, request in enumerate(requests):
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
        where = _where(index, custom_id)
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise InvalidRequest(f"{where}.custom_id: 1 to 64 characters of letters, digits, '_' and '-'",
                                 param="requests")  # fmt: skip
        if custom_id in seen:
            raise InvalidRequest(f"{where}.custom_id: also used by requests[{seen[custom_id]}]; custom_ids must be "
                                 "unique within a batch", param="requests")  # fmt: skip
        seen[custom_id] = index
        params = request.get("params")
        if not isinstance(params, dict):
            raise InvalidRequest(f"{where}.params: the Messages API params of the request (an object)",
                                 param="requests")  # fmt: skip
        body = chat_body(params, where)
        line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
        lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    return "".join(lines).encode()


# -- results out ------------------------------------------------------------------------------------
def message(chat: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Message from an OpenAI `chat.completion` (the shape every provider's answer is kept in)."""
    choice = (chat.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = said.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text", "")) for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": str(text), "citations": None})
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {"arguments": function.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
                        "input": arguments if isinstance(arguments, dict) else {"value": arguments}})  # fmt: skip
    finish = str(choice.get("finish_reason") or "stop")
    stop = finish if finish in ANTHROPIC_STOP_REASONS else STOP_REASON.get(finish, "end_turn")
    usage = chat.get("usage") or {}
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "id": "msg_" + hashlib.sha256(str(chat.get("id", "")).encode()).hexdigest()[:24], "type": "message",
        "role": "assistant", "model": chat.get("model") or "", "content": content, "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
                  "output_tokens": int(usage.get("completion_tokens") or 0),
                  "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0},
    }  # fmt: skip


def errored(kind: str, text: str) -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": text}}}


def result(r: dict[str, Any], *, ended: str) -> dict[str, Any]:
    """One request's `result` (a row of `answers.answered_rows`); `ended` is the batch's BatchRouter state."""
    if r["status"] == "succeeded":
        return {"type": "succeeded", "message": message(chat_completion(r))}
    if r["status"] == "pending":
        if ended in ("cancelled", "expired"):
            return {"type": "canceled" if ended == "cancelled" else "expired"}
        return errored("api_error", f"the batch ended ({ended}) before this request was answered")
    if r["status"] == "rejected":
        return errored("invalid_request_error", f"{r['error_code'] or 'invalid_request'}: {r['error_message']}")
    return errored("api_error", f"{r['error_code'] or 'failed'}: {r['error_message'] or 'the request failed'}")


def build(storage: Storage, info: BatchInfo, *, ended: str) -> bytes:
    """The results JSONL of a batch whose receipts are final."""
    out = []
    for r in answered_rows(storage, info).iter_rows(named=True):
        extra = {"route": r["route"], "provider": r["provider"], "lane": r["lane"],
                 "cost_usd_micros": int(r["cost_usd_micros"] or 0)}  # fmt: skip
        line = {"custom_id": r["item_id"], "result": result(r, ended=ended), "batchrouter": extra}
        out.append(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    return "".join(out).encode()
