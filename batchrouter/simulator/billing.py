"""What the simulated providers bill for a request, by the providers' published rules.

The simulator reports usage with these rules, written apart from the quote code (`quote`, `routing`)
on purpose: a property test compares the two, so a rule misread in one place shows up as a bill
above its reserve instead of being copied into both.

OpenAI (Chat Completions and Responses):

- Messages: 3 per message, plus its role and content, plus 1 and the name when one is given, plus
  3 to prime the reply (the cookbook's `num_tokens_from_messages`). A list content counts each text
  part's tokens and each image part's tokens; assistant `tool_calls` count each call's function
  name and arguments plus 3; a tool message also counts its `tool_call_id`.
- Tool definitions (and legacy `functions`): the cookbook's `num_tokens_for_tools` (per function 7,
  10 on cl100k models, plus `name:description`; 3 for a properties block; per property 3 plus
  `key:type:description`, an enum -3 plus 3 and its text per item; 12 at the end), applied to
  nested object properties too.
- `response_format` / `text.format` with a json_schema: 3 plus the compact JSON of its `name`,
  `description`, `schema` and `strict`.
- Images: by the model's tile or patch rule (`batchrouter.simulator.images`).
- Encodings: cl100k_base for gpt-3.5 and gpt-4 (not 4o/4.1/4.5), o200k_base otherwise.

Anthropic: text under a simulated Claude tokenizer (o200k_base x a ratio, rounded up per message),
4 per message and 3 for a system prompt; tool definitions as their compact JSON under the same
ratio plus the tool-use system prompt Anthropic publishes (346 tokens, 313 when `tool_choice`
forces a tool; 264 / 340 on Haiku 3 and 3.5); images by the area rule (`images`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from batchrouter.intake.tokens import count_text
from batchrouter.simulator.images import (
    anthropic_image_size,
    anthropic_image_tokens,
    digest_size,
    image_size,
    openai_image_tokens,
    vision_rule,
)
from batchrouter.simulator.models import bare_model, caches_prompts, openai_encoding
from batchrouter.simulator.rejection import WireRejection

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
TOOL_CALL_OVERHEAD = 3
SCHEMA_OVERHEAD = 3
CACHE_MIN_TOKENS = 1024
CACHE_INCREMENT = 128
ANTHROPIC_TOKENS_PER_MESSAGE = 4
ANTHROPIC_SYSTEM_TOKENS = 3


# -- OpenAI prompt tokens --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptCount:
    """Billed prompt tokens, and the digest and running token total after each cacheable segment."""

    tokens: int
    prefixes: tuple[tuple[str, int], ...] = ()
    image_tokens: int = 0


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WireRejection(f"Invalid type for '{where}': expected a string, got {type(value).__name__}.", param=where)
    return value


def tool_definition_tokens(model: str, functions: list[dict[str, Any]]) -> int:
    """The cookbook's `num_tokens_for_tools` for function definitions (`tools[].function` or `functions`)."""
    if not functions:
        return 0
    enc = openai_encoding(model)
    total = 0
    for fn in functions:
        total += 10 if enc == "cl100k_base" else 7
        description = str(fn.get("description") or "").removesuffix(".")
        total += count_text(f"{fn.get('name', '')}:{description}", enc)
        parameters = fn.get("parameters")
        if isinstance(parameters, dict):
            total += _properties_tokens(parameters, enc)
    return total + 12


def _properties_tokens(schema: dict[str, Any], enc: str) -> int:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return 0
    total = 3
    for key, prop in properties.items():
        total += 3
        if not isinstance(prop, dict):
            total += count_text(str(key), enc)
            continue
        if isinstance(prop.get("enum"), list):
            total -= 3
            for item in prop["enum"]:
                total += 3 + count_text(item if isinstance(item, str) else json.dumps(item), enc)
        kind = prop.get("type", "")
        kind = " | ".join(map(str, kind)) if isinstance(kind, list) else str(kind)
        description = str(prop.get("description") or "").removesuffix(".")
        total += count_text(f"{key}:{kind}:{description}", enc)
        total += _properties_tokens(prop, enc)
        items = prop.get("items")
        if isinstance(items, dict):
            total += _properties_tokens(items, enc)
    return total


def schema_tokens(model: str, json_schema: Any) -> int:
    """A json_schema response format: its compact JSON plus a small frame."""
    return SCHEMA_OVERHEAD + count_text(
        json.dumps(json_schema, separators=(",", ":"), ensure_ascii=False), openai_encoding(model)
    )


def _digest(previous: str, segment: Any) -> str:
    blob = json.dumps(segment, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256((previous + blob).encode()).hexdigest()


def _content_tokens(model: str, content: Any, where: str, ratio: Decimal) -> tuple[int, int]:
    """(text tokens scaled by `ratio`, image tokens) of a chat message's content."""
    enc = openai_encoding(model)
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return scale(count_text(content, enc), ratio), 0
    if not isinstance(content, list):
        raise WireRejection(f"Invalid type for '{where}': expected a string or an array of content parts.", param=where)
    text = images = 0
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise WireRejection(f"Invalid type for '{at}': expected an object.", param=at)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text", "refusal"):
            text += count_text(_text(part.get("text", part.get("refusal")), f"{at}.text"), enc)
        elif kind in ("image_url", "input_image"):
            images += _openai_image_part(model, part, at)
        else:
            raise WireRejection(
                f"Invalid value for '{at}.type': {kind!r}; the simulator bills text and image parts only.", param=at
            )
    return scale(text, ratio), images


def _openai_image_part(model: str, part: dict[str, Any], where: str) -> int:
    rule = vision_rule(model)
    if rule is None:
        raise WireRejection(
            f"Invalid content type at '{where}': image parts are not supported by model {model}.", param=where
        )
    spec = part.get("image_url")
    detail = part.get("detail")
    if isinstance(spec, dict):
        url, detail = spec.get("url"), spec.get("detail", detail)
    else:
        url = spec
    if part.get("type") == "input_image" and url is None and isinstance(part.get("file_id"), str):
        url = "file:" + part["file_id"]
        width, height = digest_size(url)
    elif not isinstance(url, str) or not url:
        raise WireRejection(f"Missing required parameter: '{where}.image_url.url'.", param=where)
    else:
        width, height = image_size(url, where=where)
    if detail not in (None, "auto", "low", "high"):
        raise WireRejection(
            f"Invalid value for '{where}.detail': {detail!r}; expected 'auto', 'low' or 'high'.", param=where
        )
    return openai_image_tokens(rule, width, height, detail)


def chat_prompt(
    model: str,
    messages: list[Any],
    *,
    functions: list[dict[str, Any]] | None = None,
    json_schema: Any = None,
    ratio: Decimal = Decimal(1),
    where: str = "messages",
) -> PromptCount:
    """Prompt tokens of a chat request as OpenAI bills it (ratio > 1 for models with other tokenizers)."""
    enc = openai_encoding(model)
    total = REPLY_PRIMING + tool_definition_tokens(model, functions or [])
    if json_schema is not None:
        total += schema_tokens(model, json_schema)
    running: list[int] = []
    images = 0
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise WireRejection(f"Invalid type for '{at}': expected an object.", param=at)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise WireRejection(
                f"Invalid value for '{at}.role': {role!r}; "
                "expected system, developer, user, assistant, tool or function.",
                param=f"{at}.role",
            )
        text, pictures = _content_tokens(model, message.get("content"), f"{at}.content", ratio)
        tokens = TOKENS_PER_MESSAGE + count_text(role, enc) + text + pictures
        images += pictures
        name = message.get("name")
        if name:
            tokens += TOKENS_PER_NAME + count_text(_text(name, f"{at}.name"), enc)
        if role == "tool":
            tokens += count_text(_text(message.get("tool_call_id"), f"{at}.tool_call_id"), enc)
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise WireRejection(f"Invalid type for '{at}.tool_calls': expected an array.", param=at)
            for j, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise WireRejection(f"Missing required parameter: '{at}.tool_calls[{j}].function'.", param=at)
                tokens += call_tokens(model, fn, f"{at}.tool_calls[{j}].function")
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            tokens += call_tokens(model, legacy, f"{at}.function_call")
        total += tokens
        running.append(total)
    prefixes: list[tuple[str, int]] = []
    if total >= CACHE_MIN_TOKENS:  # only a prompt this long can hit the cache: digest its prefixes then
        prefix = _digest(model, ["tools", functions or [], json_schema])
        for message, tokens in zip(messages, running, strict=True):
            prefix = _digest(prefix, message)
            prefixes.append((prefix, tokens))
    return PromptCount(total, tuple(prefixes), images)


def call_tokens(model: str, fn: dict[str, Any], where: str) -> int:
    enc = openai_encoding(model)
    name = _text(fn.get("name"), f"{where}.name")
    arguments = fn.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return TOOL_CALL_OVERHEAD + count_text(name, enc) + count_text(arguments, enc)


def cached_tokens(prompt: PromptCount, cache: PrefixCache, model: str) -> int:
    """OpenAI's automatic caching: the longest recently seen prefix, from 1024 tokens in steps of 128."""
    if not caches_prompts(model):
        return 0
    best = 0
    for digest, tokens in prompt.prefixes:
        if tokens >= CACHE_MIN_TOKENS and cache.seen(digest):
            best = max(best, tokens)
    for digest, tokens in prompt.prefixes:
        if tokens >= CACHE_MIN_TOKENS:
            cache.remember(digest)
    if best < CACHE_MIN_TOKENS:
        return 0
    return min(prompt.tokens, CACHE_MIN_TOKENS + (best - CACHE_MIN_TOKENS) // CACHE_INCREMENT * CACHE_INCREMENT)


class PrefixCache:
    """Prompt prefixes seen recently: a bounded map of digest -> time last seen."""

    def __init__(self, ttl_s: float, *, capacity: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, digest: str, *, ttl_s: float | None = None) -> bool:
        stamp = self._seen.get(digest)
        return stamp is not None and time.monotonic() - stamp <= (self.ttl_s if ttl_s is None else ttl_s)

    def remember(self, digest: str) -> None:
        self._seen[digest] = time.monotonic()
        self._seen.move_to_end(digest)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


def scale(tokens: int, ratio: Decimal) -> int:
    """Tokens under a tokenizer `ratio` times o200k_base's, rounded up."""
    if ratio == 1:
        return tokens
    return int((tokens * ratio).to_integral_value(rounding=ROUND_CEILING))


# -- Anthropic input tokens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnthropicCount:
    """Input tokens, and the tokens of the prefix up to the last `cache_control` breakpoint (0: none)."""

    tokens: int
    cache_prefix_tokens: int = 0
    cache_digest: str = ""
    cache_ttl_s: float = 300.0


def tool_use_system_tokens(model: str, tool_choice: Any) -> int:
    forced = isinstance(tool_choice, dict) and tool_choice.get("type") in ("any", "tool")
    if re.search(r"claude-3(-5)?-haiku", bare_model(model)):
        return 340 if forced else 264
    return 313 if forced else 346


def anthropic_input(model: str, body: dict[str, Any], ratio: Decimal) -> AnthropicCount:
    """Input tokens of a Messages request under the simulated Claude tokenizer."""
    enc = "o200k_base"
    total = 0
    digest = model
    cache_tokens, cache_digest, breakpoints, ttl = 0, "", 0, 300.0

    def mark(block: Any) -> None:
        nonlocal cache_tokens, cache_digest, breakpoints, ttl
        control = block.get("cache_control") if isinstance(block, dict) else None
        if control is not None:
            breakpoints += 1
            cache_tokens, cache_digest = total, digest
            ttl = 3600.0 if isinstance(control, dict) and control.get("ttl") == "1h" else 300.0

    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise WireRejection("tools: Input should be a valid list", param="tools")
        if tools:
            total += tool_use_system_tokens(model, body.get("tool_choice"))
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise WireRejection(f"tools.{i}.name: Field required", param="tools")
            if tool.get("type", "custom") == "custom" and not isinstance(tool.get("input_schema"), dict):
                raise WireRejection(f"tools.{i}.input_schema: Field required", param="tools")
            plain = {k: v for k, v in tool.items() if k != "cache_control"}
            total += scale(count_text(json.dumps(plain, separators=(",", ":"), ensure_ascii=False), enc), ratio)
            digest = _digest(digest, plain)
            mark(tool)
    system = body.get("system")
    if system is not None and system != "":
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
        if not isinstance(blocks, list):
            raise WireRejection("system: Input should be a valid string or a list of text blocks", param="system")
        raw = 0
        for i, block in enumerate(blocks):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise WireRejection(f"system.{i}: expected a text block", param="system")
            raw += count_text(block["text"], enc)
        total += ANTHROPIC_SYSTEM_TOKENS + scale(raw, ratio)
        for block in blocks:
            digest = _digest(digest, block.get("text"))
            mark(block)
    messages = body.get("messages")
    assert isinstance(messages, list)
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise WireRejection(f"messages.{i}: Input should be a valid dictionary", param="messages")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise WireRejection(
                f"messages.{i}.role: Unexpected role {role!r}. Give a system prompt as the top-level "
                "`system` parameter, not as a message.",
                param="messages",
            )
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise WireRejection(f"messages.{i}.content: Input should be a valid string or list", param="messages")
        raw, images = _anthropic_blocks(blocks, f"messages.{i}.content")
        total += ANTHROPIC_TOKENS_PER_MESSAGE + scale(raw, ratio) + images
        digest = _digest(digest, message)
        for block in blocks:
            mark(block)
    if breakpoints > 4:
        raise WireRejection(f"A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}.")
    return AnthropicCount(total, cache_tokens, cache_digest, ttl)


def _anthropic_blocks(blocks: list[Any], where: str) -> tuple[int, int]:
    """(raw o200k tokens of text, image tokens) of a message's content blocks."""
    raw = images = 0
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        if not isinstance(block, dict):
            raise WireRejection(f"{at}: Input should be a valid dictionary", param=where)
        kind = block.get("type")
        if kind == "text":
            raw += count_text(_text(block.get("text"), f"{at}.text"), "o200k_base")
        elif kind == "image":
            images += anthropic_image_tokens(*anthropic_image_size(block.get("source"), at))
        elif kind == "tool_use":
            raw += count_text(_text(block.get("name"), f"{at}.name"), "o200k_base")
            raw += count_text(
                json.dumps(block.get("input", {}), separators=(",", ":"), ensure_ascii=False), "o200k_base"
            )
        elif kind == "tool_result":
            content = block.get("content", "")
            if isinstance(content, str):
                raw += count_text(content, "o200k_base")
            elif isinstance(content, list):
                more_raw, more_images = _anthropic_blocks(content, f"{at}.content")
                raw += more_raw
                images += more_images
            else:
                raise WireRejection(f"{at}.content: Input should be a valid string or list", param=where)
        elif kind in ("thinking", "redacted_thinking"):
            raw += count_text(str(block.get("thinking", block.get("data", ""))), "o200k_base")
        else:
            raise WireRejection(f"{at}.type: unexpected block type {kind!r}", param=where)
    return raw, images


# -- generated outputs -----------------------------------------------------------------------------------


def value_for(schema: Any, words: list[str], depth: int = 0) -> Any:
    """A small value that satisfies a JSON schema (objects, arrays, enums, scalars)."""
    if not isinstance(schema, dict) or depth > 6:
        return words[0] if words else "value"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return value_for(schema[key][0], words, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        given = schema.get("properties")
        props: dict[str, Any] = given if isinstance(given, dict) else {}
        return {key: value_for(sub, words[i + 1 :] or words, depth + 1) for i, (key, sub) in enumerate(props.items())}
    if kind == "array":
        return [value_for(schema.get("items"), words, depth + 1)]
    if kind == "integer":
        return len(words) % 10
    if kind == "number":
        return len(words) % 10 + 0.5
    if kind == "boolean":
        return len(words) % 2 == 0
    if kind == "null":
        return None
    return " ".join(words[:3]) or "value"
