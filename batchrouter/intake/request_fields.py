"""The request fields BatchRouter understands, how each is priced, and which providers take it.

Every field of an OpenAI request body is one of:
  priced and passed on  counted into the quote and sent as written (`tools`, `response_format`, `n`, ...);
  mapped                sent in the target provider's own form (Anthropic: `stop` -> `stop_sequences`, ...);
  kept                  recorded by BatchRouter and not sent (`metadata` on non-OpenAI routes);
  refused               the item is rejected naming the field (hosted tools, audio output, ...).
Nothing else is accepted: an unknown field is refused, so nothing reaches a provider unpriced.

A field that not every provider supports is a *feature* of the item; routing keeps only the routes
whose provider wire (`openai`, `anthropic`, `openrouter`, `openai_compatible`) and model support every
feature of the item (`route_features`), and rejects the item naming the field when none does.

`/v1/responses` bodies are translated into the Chat Completions form here (`responses_to_chat`), so
every later stage sees one shape; the item keeps `endpoint = "responses"`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from batchrouter.core.catalog import CatalogEntry
from batchrouter.intake.images import image_size

Wire = Literal["openai", "anthropic", "openrouter", "openai_compatible"]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_N = 128
MAX_STOP = 4

# Feature names (what routes must support), by wire. Model-specific ones (images, reasoning effort,
# service tiers) are further narrowed per catalog entry in `route_features`.
_COMMON = {
    "tools",
    "json_object",
    "json_schema",
    "image",
    "logprobs",
    "seed",
    "stop",
    "top_p",
    "penalties",
    "logit_bias",
    "temperature",
    "temperature_above_1",
    "user",
}
WIRE_FEATURES: dict[str, frozenset[str]] = {
    "openai": frozenset(
        _COMMON
        | {"n", "prediction", "reasoning_effort", "service_tier_flex", "service_tier_priority", "store", "openai_only"}
    ),
    "openrouter": frozenset(_COMMON | {"reasoning_effort"}),
    "openai_compatible": frozenset(_COMMON | {"n"}),
    "anthropic": frozenset({"tools", "image", "stop", "top_p", "user", "temperature"}),
}
# What each feature is, for rejection reasons: the body field a user recognises.
FEATURE_FIELDS: dict[str, str] = {
    "tools": "tools",
    "json_object": "response_format",
    "json_schema": "response_format",
    "image": "messages[].content[].image_url",
    "logprobs": "logprobs",
    "seed": "seed",
    "stop": "stop",
    "top_p": "top_p",
    "penalties": "frequency_penalty/presence_penalty",
    "logit_bias": "logit_bias",
    "temperature": "temperature",
    "temperature_above_1": "temperature",
    "user": "user",
    "n": "n",
    "prediction": "prediction",
    "reasoning_effort": "reasoning_effort",
    "service_tier_flex": "service_tier",
    "service_tier_priority": "service_tier",
    "store": "store",
    "openai_only": "verbosity/prompt_cache_key/safety_identifier/web_search_options",
}

# Chat Completions body fields, by how they are handled (see the module docstring). The fields read
# into item columns (`model`, `messages`, caps, `temperature`, `n`, `metadata`) are not in `params`.
COLUMN_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "n", "metadata")
IGNORED_FIELDS = ("stream", "stream_options")  # a batch answers whole; documented as ignored
PASSED_FIELDS: dict[str, str | None] = {
    # field -> feature it needs (None: every wire takes it)
    "tools": "tools",
    "tool_choice": "tools",
    "parallel_tool_calls": "tools",
    "functions": "tools",
    "function_call": "tools",
    "response_format": None,  # feature set from its type
    "stop": "stop",
    "seed": "seed",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "prediction": "prediction",
    "service_tier": None,  # feature set from its value
    "store": "store",
    "user": "user",
    "top_p": "top_p",
    "frequency_penalty": "penalties",
    "presence_penalty": "penalties",
    "logit_bias": "logit_bias",
    "reasoning_effort": "reasoning_effort",
    "verbosity": "openai_only",
    "prompt_cache_key": "openai_only",
    "safety_identifier": "openai_only",
}
REFUSED_FIELDS: dict[str, str] = {
    "audio": "audio output is priced per audio token, which BatchRouter does not quote yet",
    "modalities": "output modalities other than text are not quoted yet",
    "web_search_options": "web search is billed per call by the provider and cannot be quoted in advance",
}
SERVICE_TIERS = ("auto", "default", "flex", "priority")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


class FieldError(ValueError):
    """A body field that cannot be accepted: its path and the reason."""

    def __init__(self, field: str, reason: str, code: str = "unsupported_field") -> None:
        super().__init__(reason)
        self.field, self.reason, self.code = field, reason, code


@dataclass
class Extras:
    """What an item's messages and fields add beyond message text: billed text, images, features."""

    billed_text: list[str] = field(default_factory=list)  # counted as input tokens (tool schemas, ...)
    # Billed as output beyond the cap: a prediction's rejected tokens are charged at completion rates.
    predicted_text: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)  # {detail, width, height}
    features: set[str] = field(default_factory=set)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An `image_url` part as {detail, width, height}; size read from a data URL's header when it can be."""
    spec = part.get("image_url")
    if isinstance(spec, str):
        spec = {"url": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) or not spec["url"]:
        raise FieldError(where, f"{where} needs image_url.url (an http(s) URL or a data URL)", "malformed_messages")
    detail = spec.get("detail", "auto")
    if detail not in ("auto", "low", "high", None):
        raise FieldError(where, f"{where}.detail is {detail!r}; expected auto, low or high", "malformed_messages")
    url = spec["url"]
    if not (url.startswith(("http://", "https://", "data:image/"))):
        raise FieldError(where, f"{where}.url must be an http(s) URL or a data:image/... URL", "malformed_messages")
    size = image_size(url)
    return {"detail": detail or "auto", "width": size[0] if size else None, "height": size[1] if size else None}


def normalise_message(msg: Any, i: int, extras: Extras) -> dict[str, Any]:
    """One chat message -> {role, content, name, raw}; raises FieldError with the reason.

    `content` is the message's text (text parts joined), which is counted and scanned; `raw` keeps the
    message exactly as written when it carries more than text (parts, tool calls), and is what is sent.
    """
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise FieldError(where, f"message {i + 1} is not an object", "malformed_messages")
    role = msg.get("role")
    if role not in ROLES:
        raise FieldError(
            where, f"message {i + 1} has role {role!r}; expected one of {', '.join(ROLES)}", "malformed_messages"
        )
    content = msg.get("content")
    plain = True
    texts: list[str] = []
    if isinstance(content, list):
        plain = False
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url":
                extras.images.append(image_part(part, f"{where}.content[{j}]"))
                extras.features.add("image")
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            else:
                raise FieldError(
                    f"{where}.content[{j}]",
                    f"message {i + 1} has a content part of type {kind!r}; supported: text, image_url",
                    "malformed_messages",
                )
        text = "\n".join(texts)
    elif isinstance(content, str):
        text = content
    elif content is None and (msg.get("tool_calls") or msg.get("function_call")) and role == "assistant":
        text = ""
    else:
        raise FieldError(where, f"message {i + 1} has no text content", "malformed_messages")
    for key in ("tool_calls", "function_call", "tool_call_id"):
        if msg.get(key) is not None:
            plain = False
            extras.billed_text.append(_json(msg[key]))
            extras.features.add("tools")
    if role in ("tool", "function"):
        extras.features.add("tools")
        plain = False
    unknown = set(msg) - {"role", "content", "name", "tool_calls", "function_call", "tool_call_id", "refusal"}
    if unknown:
        raise FieldError(
            where, f"message {i + 1} has unsupported key(s) {', '.join(sorted(unknown))}", "malformed_messages"
        )
    name = msg.get("name")
    if name is not None and not isinstance(name, str):
        raise FieldError(f"{where}.name", f"message {i + 1} has a name that is not a string", "malformed_messages")
    return {"role": role, "content": text, "name": name, "raw": None if plain else _json(msg)}


def normalise_messages(data: Any, extras: Extras | None = None) -> list[dict[str, Any]]:
    """Validate a chat message list; raises FieldError (a ValueError) with the reason."""
    extras = extras if extras is not None else Extras()
    if not isinstance(data, list):
        raise FieldError(
            "messages", f"expected a JSON array of messages, got {type(data).__name__}", "malformed_messages"
        )
    if not data:
        raise FieldError("messages", "the message array is empty", "malformed_messages")
    return [normalise_message(m, i, extras) for i, m in enumerate(data)]


def passed_params(body: dict[str, Any], extras: Extras) -> dict[str, Any]:
    """The body fields sent on as written, validated; the features they need are added to `extras`."""
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in COLUMN_FIELDS or key in IGNORED_FIELDS:
            continue
        if key in REFUSED_FIELDS:
            raise FieldError(key, f"{key}: {REFUSED_FIELDS[key]}; remove it")
        if key not in PASSED_FIELDS:
            raise FieldError(key, f"body field {key!r} is not supported; remove it (supported fields: see README)")
        if value is None:
            params[key] = None
            continue
        feature = PASSED_FIELDS[key]
        if key == "response_format":
            kind = value.get("type") if isinstance(value, dict) else None
            if kind == "json_schema":
                schema = value.get("json_schema")
                if not isinstance(schema, dict) or not isinstance(schema.get("schema", {}), dict):
                    raise FieldError(key, "response_format.json_schema must be an object with a schema")
                extras.billed_text.append(_json(schema))
                feature = "json_schema"
            elif kind == "json_object":
                feature = "json_object"
            elif kind != "text":
                raise FieldError(key, f"response_format.type {kind!r} is not one of text, json_object, json_schema")
        elif key == "service_tier":
            if value not in SERVICE_TIERS:
                raise FieldError(key, f"service_tier {value!r} is not one of {', '.join(SERVICE_TIERS)}")
            feature = {"flex": "service_tier_flex", "priority": "service_tier_priority"}.get(value)
        elif key in ("tools", "functions"):
            if not isinstance(value, list):
                raise FieldError(key, f"{key} must be a list of function definitions")
            for j, tool in enumerate(value):
                kind = tool.get("type", "function") if isinstance(tool, dict) else None
                if kind not in ("function",) and not (key == "functions" and isinstance(tool, dict)):
                    raise FieldError(
                        f"{key}[{j}]",
                        f"{key}[{j}] has type {kind!r}: only function tools can be "
                        "quoted (hosted tools are billed per call by the provider)",
                    )
            extras.billed_text.append(_json(value))
        elif key == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOP:
                raise FieldError(key, f"stop must be a string or a list of at most {MAX_STOP} strings")
        elif key == "prediction":
            content = value.get("content") if isinstance(value, dict) else None
            if isinstance(content, list):
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise FieldError(key, "prediction must be an object {type: content, content}")
            extras.predicted_text.append(content)
        elif key == "reasoning_effort" and value not in REASONING_EFFORTS:
            raise FieldError(key, f"reasoning_effort {value!r} is not one of {', '.join(REASONING_EFFORTS)}")
        elif key == "top_logprobs" and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20):
            raise FieldError(key, "top_logprobs must be a whole number from 0 to 20")
        elif key == "seed" and (not isinstance(value, int) or isinstance(value, bool)):
            raise FieldError(key, "seed must be a whole number")
        elif key == "store" and value is False:
            feature = None  # not storing is every provider's default
        elif key == "logprobs" and value is False:
            feature = None
        elif key == "parallel_tool_calls" and not isinstance(value, bool):
            raise FieldError(key, "parallel_tool_calls must be true or false")
        elif key == "tool_choice":
            extras.billed_text.append(_json(value))
        if feature:
            extras.features.add(feature)
        params[key] = value
    return params


# ---- /v1/responses -> the Chat Completions form ---------------------------------------------------

_RESPONSES_REFUSED = {
    "previous_response_id": "it continues a stored conversation on OpenAI's servers; send the whole input instead",
    "conversation": "it continues a stored conversation on OpenAI's servers; send the whole input instead",
    "background": "a batch already runs in the background; remove it",
    "prompt": "stored prompt templates are resolved on OpenAI's servers and cannot be quoted; inline the prompt",
    "include": "extra output items cannot be produced through Chat Completions; remove it",
    "max_tool_calls": "hosted tool calls cannot be quoted; remove it",
}
_RESPONSES_SAME = (
    "model",
    "temperature",
    "top_p",
    "metadata",
    "store",
    "user",
    "service_tier",
    "parallel_tool_calls",
    "top_logprobs",
    "prompt_cache_key",
    "safety_identifier",
)
_RESPONSES_IGNORED = ("stream", "stream_options", "truncation")


def _responses_part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise FieldError(
                where, f"{where}: input_image needs image_url (file_id images are not supported)", "malformed_messages"
            )
        spec: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail"):
            spec["detail"] = part["detail"]
        return {"type": "image_url", "image_url": spec}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    raise FieldError(
        where, f"{where} has a content part of type {kind!r}; supported: input_text, input_image", "malformed_messages"
    )


def _responses_input(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise FieldError("input", "input must be a string or a non-empty list of input items", "malformed_messages")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise FieldError(where, f"{where} is not an object", "malformed_messages")
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [_responses_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
            messages.append({"role": item.get("role"), "content": content})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            if messages and messages[-1]["role"] == "assistant" and "tool_calls" in messages[-1]:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": output if isinstance(output, str) else _json(output),
                }
            )
        else:
            raise FieldError(
                where,
                f"{where} has type {kind!r}; supported: message, function_call, function_call_output",
                "malformed_messages",
            )
    return messages


def responses_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A `/v1/responses` body in the Chat Completions form, field by field; raises FieldError."""
    for key, reason in _RESPONSES_REFUSED.items():
        if body.get(key) not in (None, [], False):
            raise FieldError(key, f"{key}: {reason}")
    chat: dict[str, Any] = {k: body[k] for k in _RESPONSES_SAME if k in body}
    messages = _responses_input(body.get("input"))
    if body.get("instructions"):
        if not isinstance(body["instructions"], str):
            raise FieldError("instructions", "instructions must be a string")
        messages.insert(0, {"role": "developer", "content": body["instructions"]})
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        tools = body["tools"]
        if not isinstance(tools, list):
            raise FieldError("tools", "tools must be a list")
        converted = []
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise FieldError(
                    f"tools[{j}]",
                    f"tools[{j}] has type {kind!r}: only function tools can be quoted "
                    "(hosted tools are billed per call by the provider)",
                )
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
            converted.append({"type": "function", "function": fn})
        chat["tools"] = converted
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict) and choice.get("type") == "function":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif choice in ("auto", "none", "required"):
            chat["tool_choice"] = choice
        else:
            raise FieldError("tool_choice", f"tool_choice {choice!r} names a hosted tool; only functions are quoted")
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise FieldError("text", "text must be an object")
        fmt = text.get("format")
        if isinstance(fmt, dict):
            if fmt.get("type") == "json_schema":
                schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
                chat["response_format"] = {"type": "json_schema", "json_schema": schema}
            elif fmt.get("type") in ("json_object", "text"):
                chat["response_format"] = {"type": fmt["type"]}
            else:
                raise FieldError("text.format", f"text.format.type {fmt.get('type')!r} is not supported")
        if text.get("verbosity") is not None:
            chat["verbosity"] = text["verbosity"]
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise FieldError("reasoning", "reasoning must be an object")
        if reasoning.get("summary") not in (None,) or reasoning.get("generate_summary") not in (None,):
            raise FieldError(
                "reasoning.summary",
                "reasoning summaries are not available through this route; remove reasoning.summary",
            )
        if reasoning.get("effort") is not None:
            chat["reasoning_effort"] = reasoning["effort"]
    known = (
        set(_RESPONSES_SAME)
        | set(_RESPONSES_IGNORED)
        | set(_RESPONSES_REFUSED)
        | {"input", "instructions", "max_output_tokens", "tools", "tool_choice", "text", "reasoning"}
    )
    for key in body:
        if key not in known:
            raise FieldError(key, f"body field {key!r} of /v1/responses is not supported; remove it")
    return chat


# ---- per route --------------------------------------------------------------------------------------


def wire_of(provider: str) -> Wire:
    """The wire format of a catalog provider: built-in names speak their own, others are OpenAI-compatible."""
    if provider in ("openai", "anthropic", "openrouter"):
        return provider  # type: ignore[return-value]
    return "openai_compatible"


def always_reasons(entry: CatalogEntry) -> bool:
    """o-series and the first gpt-5 models reason on every request (and take only the default temperature);
    gpt-5.1 and later reason only when asked."""
    name = entry.upstream.rsplit("/", 1)[-1]
    return entry.reasoning and not re.match(r"gpt-5\.\d", name)


def route_features(entry: CatalogEntry) -> frozenset[str]:
    """The features a catalog entry's route supports: its wire's, narrowed by what the model offers."""
    features = set(WIRE_FEATURES[wire_of(entry.provider)])
    if always_reasons(entry):
        features -= {"temperature", "temperature_above_1"}
    if not re.match(r"(gpt-4o|gpt-4\.1)", entry.upstream.rsplit("/", 1)[-1]):
        features.discard("prediction")  # OpenAI offers predicted outputs on the gpt-4o and gpt-4.1 families only
    if entry.image_rule == "none":
        features.discard("image")
    if not entry.reasoning:
        features.discard("reasoning_effort")
    if not entry.flex:
        features.discard("service_tier_flex")
    if entry.priority_input_pico_per_token is None or entry.priority_output_pico_per_token is None:
        features.discard("service_tier_priority")
    return frozenset(features)
