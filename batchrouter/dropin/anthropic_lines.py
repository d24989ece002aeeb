"""Anthropic's Message Batch requests in, and its results JSONL out.

In: `{"requests": [{"custom_id", "params": {Messages API params}}]}` checked the way Anthropic
checks it (custom_id 1-64 of `[a-zA-Z0-9_-]`, unique; `model`, `max_tokens`, `messages` present;
every value of the type Anthropic's API takes, no key it does not know), each problem naming
`requests[i]`, its custom_id and the field (`param` holds the field's path), then written as one OpenAI chat-completions
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
import math
import re
from collections.abc import Callable
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


# Every value of a request is read through `_Field`'s typed readers: a value of the wrong type (or a
# key this face does not know) refuses the create naming its path, never reaches the manifest.
class _Field:
    """Where a value sits: `requests[i] (custom_id 'x').params.messages[0]`; `param` omits the custom_id."""

    def __init__(self, index: int, custom_id: object, path: str = "") -> None:
        self.index, self.custom_id, self.path = index, custom_id, path

    def __truediv__(self, key: str | int) -> _Field:
        return _Field(self.index, self.custom_id, self.path + (f"[{key}]" if isinstance(key, int) else f".{key}"))

    def __str__(self) -> str:
        return _where(self.index, self.custom_id) + self.path

    @property
    def param(self) -> str:
        return f"requests[{self.index}]{self.path}"

    def refuse(self, what: str) -> InvalidRequest:
        return InvalidRequest(f"{self}: {what}", param=self.param)

    def wrong(self, value: Any, expected: str) -> InvalidRequest:
        return self.refuse(f"{expected}, not {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _shown(value: Any) -> str:
    """A short string as itself, anything else by its kind."""
    return repr(value) if isinstance(value, str) and len(value) <= 40 else _kind(value)


def _string(value: Any, at: _Field) -> str:
    if not isinstance(value, str):
        raise at.wrong(value, "a string")
    return value


def _integer(value: Any, at: _Field) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise at.wrong(value, "a whole number")
    return value


def _number(value: Any, at: _Field) -> float | int:
    # Python's JSON reads NaN and Infinity; Anthropic's API (and JSON) has no such number.
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise at.wrong(value, "a finite number")
    return value


def _array(value: Any, at: _Field, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise at.wrong(value, what)
    return value


def _object(
    value: Any, at: _Field, what: str, *, keys: frozenset[str], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`value` as an object holding only `keys`, with every one of `required`."""
    if not isinstance(value, dict):
        raise at.wrong(value, what)
    unknown = sorted(set(value) - keys)
    if unknown:
        raise (at / unknown[0]).refuse(f"not a field of {what}; it takes {', '.join(sorted(keys))}")
    missing = [k for k in required if k not in value]
    if missing:
        raise at.refuse(f"{', '.join(missing)} missing; {what} needs {', '.join(required)}")
    return value


_TEXT_KEYS = frozenset({"type", "text", "cache_control", "citations"})
_IMAGE_KEYS = frozenset({"type", "source", "cache_control"})
_SOURCE_KEYS = {"base64": frozenset({"type", "media_type", "data"}), "url": frozenset({"type", "url"})}
_MESSAGE_KEYS = frozenset({"role", "content"})
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control"})
_TOOL_CHOICE_KEYS = frozenset({"type", "name", "disable_parallel_tool_use"})
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_REQUEST_KEYS = frozenset({"custom_id", "params"})


def _cache_control(value: dict[str, Any], at: _Field) -> None:
    """Prompt-caching marks are not passed on (the providers cache on their own), but must be well formed."""
    if "cache_control" in value:
        _object(value["cache_control"], at / "cache_control", "a cache control ({type: 'ephemeral'})",
                keys=frozenset({"type", "ttl"}), required=("type",))  # fmt: skip


def _block(block: Any, at: _Field, *, text_only: bool = False) -> dict[str, Any]:
    """One Anthropic content block as a chat-completions content part (`text_only`: a system prompt's)."""
    if not isinstance(block, dict):
        raise at.wrong(block, "a content block (an object)")
    _cache_control(block, at)
    kind = block.get("type")
    if kind == "text":
        _object(block, at, "a text block", keys=_TEXT_KEYS, required=("type", "text"))
        if block.get("citations") is not None:  # an earlier answer's citations: not passed on, but a list
            _array(block["citations"], at / "citations", "a list of citations (or null)")
        return {"type": "text", "text": _string(block["text"], at / "text")}
    if kind == "image" and not text_only:
        _object(block, at, "an image block", keys=_IMAGE_KEYS, required=("type", "source"))
        source_at = at / "source"
        source = block["source"]
        style = source.get("type") if isinstance(source, dict) else None
        if not isinstance(style, str) or style not in _SOURCE_KEYS:
            if isinstance(source, dict):
                raise (source_at / "type").refuse(f"{_shown(style)} is not an image source BatchRouter's drop-in "
                                                  "runs; use 'base64' or 'url'")  # fmt: skip
            raise source_at.wrong(source, "an image source object ({type: 'base64' | 'url', ...})")
        if style == "base64":
            _object(source, source_at, "a base64 image source", keys=_SOURCE_KEYS["base64"],
                    required=("type", "media_type", "data"))  # fmt: skip
            media_type = _string(source["media_type"], source_at / "media_type")
            url = f"data:{media_type};base64,{_string(source['data'], source_at / 'data')}"
        else:
            _object(source, source_at, "a url image source", keys=_SOURCE_KEYS["url"], required=("type", "url"))
            url = _string(source["url"], source_at / "url")
        return {"type": "image_url", "image_url": {"url": url}}
    allowed = "'text' blocks" if text_only else "'text' and 'image' blocks"
    raise (at / "type").refuse(f"content block type {_shown(kind)} is not one BatchRouter's drop-in runs here; send "
                               f"{allowed}")  # fmt: skip


def _content(content: Any, at: _Field, *, text_only: bool = False) -> Any:
    if isinstance(content, str):
        return content
    blocks = _array(content, at, "a string or a list of content blocks")
    parts = [_block(b, at / n, text_only=text_only) for n, b in enumerate(blocks)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _message(message: Any, at: _Field) -> dict[str, Any]:
    _object(message, at, "a message", keys=_MESSAGE_KEYS, required=("role", "content"))
    role = message["role"]
    if role not in ("user", "assistant"):
        raise (at / "role").refuse(f"'user' or 'assistant', not {_shown(role)}")
    return {"role": role, "content": _content(message["content"], at / "content")}


def _tools(tools: Any, at: _Field) -> list[dict[str, Any]]:
    out = []
    for n, tool in enumerate(_array(tools, at, "a list of tools")):
        here = at / n
        _object(tool, here, "a tool", keys=_TOOL_KEYS, required=("name",))
        _cache_control(tool, here)
        if "type" in tool and tool["type"] != "custom":
            raise (here / "type").refuse(f"{_shown(tool['type'])}: BatchRouter's drop-in runs custom tools "
                                         "only (a name, description and input_schema); remove the type or the "
                                         "tool")  # fmt: skip
        schema = tool.get("input_schema", {})
        if not isinstance(schema, dict):
            raise (here / "input_schema").wrong(schema, "a JSON schema (an object)")
        out.append({"type": "function", "function": {"name": _string(tool["name"], here / "name"),
                                                       "description": _string(tool.get("description", ""),
                                                                              here / "description"),
                                                       "parameters": schema}})  # fmt: skip
    return out


def _tool_choice(choice: Any, at: _Field) -> Any:
    _object(choice, at, "a tool choice ({type: 'auto' | 'any' | 'tool' | 'none'})", keys=_TOOL_CHOICE_KEYS,
            required=("type",))  # fmt: skip
    if "disable_parallel_tool_use" in choice and not isinstance(choice["disable_parallel_tool_use"], bool):
        raise (at / "disable_parallel_tool_use").wrong(choice["disable_parallel_tool_use"], "a boolean")
    kind = choice["type"]
    if kind == "tool":
        _object(choice, at, "a tool choice of type 'tool'", keys=_TOOL_CHOICE_KEYS, required=("type", "name"))
        return {"type": "function", "function": {"name": _string(choice["name"], at / "name")}}
    if not isinstance(kind, str) or kind not in _TOOL_CHOICES:
        raise (at / "type").refuse(f"'auto', 'any', 'tool' or 'none', not {_shown(kind)}")
    return _TOOL_CHOICES[kind]


def _stop_sequences(value: Any, at: _Field) -> list[str]:
    return [_string(s, at / n) for n, s in enumerate(_array(value, at, "a list of strings"))]


def _user(metadata: Any, at: _Field) -> str | None:
    _object(metadata, at, "an object ({user_id})", keys=frozenset({"user_id"}))
    user = metadata.get("user_id")
    return None if user is None else _string(user, at / "user_id")


# How each passed param is read: its reader, given the value and where it is.
_READERS: dict[str, Callable[[Any, _Field], Any]] = {
    "model": _string, "max_tokens": _integer, "temperature": _number, "top_p": _number,
    "stop_sequences": _stop_sequences, "tools": _tools, "tool_choice": _tool_choice,
}  # fmt: skip


def chat_body(params: dict[str, Any], at: _Field) -> dict[str, Any]:
    """A Messages API request as a chat-completions body (the manifest's line body), every value's type checked."""
    missing = [k for k in REQUIRED if k not in params]
    if missing:
        raise at.refuse(f"{', '.join(missing)} missing; a Messages request needs {', '.join(REQUIRED)}")
    unknown = sorted(set(params) - set(PASSED) - IGNORED - {"messages", "system", "metadata"})
    if unknown:
        runs = ", ".join(sorted({*PASSED, "messages", "system", "metadata"}))
        raise (at / unknown[0]).refuse(f"not a param BatchRouter's drop-in passes on; remove it (it runs {runs})")
    if "stream" in params and params["stream"] is not False:
        raise (at / "stream").refuse("a batch request cannot stream; remove it (or send false)")
    read = {key: _READERS[key](params[key], at / key) for key in PASSED if key in params}
    given = _array(params["messages"], at / "messages", "a non-empty list of messages")
    if not given:
        raise (at / "messages").refuse("a non-empty list of messages, not an empty one")
    messages: list[dict[str, Any]] = []
    if "system" in params:
        system = _content(params["system"], at / "system", text_only=True)
        if system:
            messages.append({"role": "system", "content": system})
    messages.extend(_message(message, at / "messages" / n) for n, message in enumerate(given))
    body: dict[str, Any] = {"messages": messages}
    for key, name in PASSED.items():
        if key in read:
            body[name] = read[key]
    if "metadata" in params:
        user = _user(params["metadata"], at / "metadata")
        if user:
            body["user"] = user
    return body


def manifest(requests: list[Any]) -> bytes:
    """The create body's requests as BatchRouter's JSONL manifest (the same requests: the same bytes).

    Raises:
        InvalidRequest: no requests, too many, or one is malformed (named by its index, custom_id and field).
    """
    if not isinstance(requests, list) or not requests:
        raise InvalidRequest("requests: give a list of at least one request", param="requests")
    if len(requests) > MAX_REQUESTS:
        raise InvalidRequest(f"requests: {len(requests)} requests; a batch holds at most {MAX_REQUESTS:,}",
                             param="requests")  # fmt: skip
    seen: dict[str, int] = {}
    lines = []
    for index, request in enumerate(requests):
        custom_id = request.get("custom_id") if isinstance(request, dict) else None
        at = _Field(index, custom_id)
        _object(request, at, "a request ({custom_id, params})", keys=_REQUEST_KEYS)
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise (at / "custom_id").refuse("1 to 64 characters of letters, digits, '_' and '-'")
        if custom_id in seen:
            raise (at / "custom_id").refuse(f"also used by requests[{seen[custom_id]}]; custom_ids must be unique "
                                            "within a batch")  # fmt: skip
        seen[custom_id] = index
        params = request.get("params")
        if not isinstance(params, dict):
            raise (at / "params").wrong(params, "the Messages API params of the request (an object)")
        body = chat_body(params, at / "params")
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
