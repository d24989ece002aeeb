"""What each simulated wire accepts, checked as the provider checks it, and what the request is billed.

`plan_for` reads a request body into a `Plan` (the model, the billed prompt tokens, the output cap and
what the answer must look like) or raises `WireRejection` naming the field, as the provider would
answer it: an unknown field or an out-of-range value on OpenAI, an extra input on Anthropic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from batchrouter.core.config import SimulatorConfig
from batchrouter.intake.tokens import count_text
from batchrouter.simulator import billing as bill
from batchrouter.simulator import models
from batchrouter.simulator.billing import PrefixCache
from batchrouter.simulator.rejection import WireRejection

OPENROUTER_FIELDS = frozenset({"provider", "usage", "models", "transforms", "route", "plugins"})
REASONING_TOKENS = {
    "none": (0, 0),
    "minimal": (0, 0),
    "low": (32, 256),
    "medium": (128, 1024),
    "high": (512, 4096),
    "xhigh": (1024, 8192),
}
ANTHROPIC_CACHE_MIN = 1024
ANTHROPIC_HAIKU_CACHE_MIN = 2048


class Context(Protocol):
    """What checking a request needs from the running simulator."""

    config: SimulatorConfig
    cache: PrefixCache

    def check_cap(self, model: str, cap: int | None, key: str) -> int: ...


def _number(body: dict[str, Any], key: str, lo: float, hi: float | None = None, *, integer: bool = False) -> None:
    value = body.get(key)
    if value is None:
        return
    kind = "integer" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise WireRejection(
            f"Invalid type for '{key}': expected an {kind}, but got {type(value).__name__} instead.", param=key
        )
    if value < lo:
        raise WireRejection(
            f"Invalid '{key}': {kind} below minimum value. Expected a value >= {lo}, but got {value} instead.",
            param=key,
        )
    if hi is not None and value > hi:
        raise WireRejection(
            f"Invalid '{key}': {kind} above maximum value. Expected a value <= {hi}, but got {value} instead.",
            param=key,
        )


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], label: str) -> None:
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise WireRejection(
            f"Invalid type for '{key}': expected {label}, but got {type(value).__name__} instead.", param=key
        )


def _one_of(body: dict[str, Any], key: str, allowed: tuple[str, ...]) -> None:
    value = body.get(key)
    if value is not None and value not in allowed:
        raise WireRejection(
            f"Invalid value for '{key}': {value!r}. Supported values are: {', '.join(repr(a) for a in allowed)}.",
            param=key,
        )


def _stops(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise WireRejection(
            f"Invalid value for '{key}': expected a string or an array of at most 4 strings.", param=key
        )
    return [s for s in stops if s]


def _metadata(body: dict[str, Any]) -> None:
    value = body.get("metadata")
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > 16 or not all(isinstance(v, str) for v in value.values()):
        raise WireRejection("Invalid 'metadata': expected an object of at most 16 string values.", param="metadata")


def _mentions_json(value: Any) -> bool:
    return "json" in json.dumps(value, ensure_ascii=False).lower()


def _forced_tool(functions: list[dict[str, Any]], name: Any, key: str) -> str:
    if not isinstance(name, str) or name not in {f.get("name") for f in functions}:
        raise WireRejection(f"Invalid value for '{key}': no function named {name!r} was given in tools.", param=key)
    return name


def _function_defs(tools: Any, key: str, *, flat: bool) -> list[dict[str, Any]]:
    """Function definitions of `tools` (Chat: `{type, function: {...}}`; Responses: flat `{type, name, ...}`)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > 128:
        raise WireRejection(f"Invalid '{key}': expected an array of at most 128 tools.", param=key)
    functions = []
    for i, tool in enumerate(tools):
        at = f"{key}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise WireRejection(
                f"Invalid value for '{at}.type': {kind!r}; the simulator runs function tools only.", param=at
            )
        fn = tool if flat else tool.get("function")
        if not isinstance(fn, dict):
            raise WireRejection(f"Missing required parameter: '{at}.function'.", param=at)
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
            raise WireRejection(
                f"Invalid '{at}.name': expected 1-64 letters, digits, underscores or dashes, got {name!r}.", param=at
            )
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise WireRejection(f"Invalid type for '{at}.parameters': expected an object.", param=at)
        functions.append({k: fn[k] for k in ("name", "description", "parameters") if k in fn})
    return functions


@dataclass
class Plan:
    """What a request asks for and what its prompt is billed, whatever the wire."""

    dialect: str  # openai | openrouter | responses | anthropic
    model: str
    body: dict[str, Any]
    prompt_tokens: int
    cap: int
    marker_text: str
    counter: Callable[[str], int]
    n: int = 1
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h: bool = False
    reasoning: tuple[int, int] = (0, 0)
    functions: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"  # none | auto | required | the name of the function it forces
    legacy_functions: bool = False
    json_schema: Any = None
    json_object: bool = False
    stops: list[str] = field(default_factory=list)
    service_tier: str = "default"


def _counter(encoding: str, ratio: Decimal) -> Callable[[str], int]:
    return lambda text: bill.scale(count_text(text, encoding), ratio)


def _reasoning_range(
    body: dict[str, Any], model: str, effort: Any, key: str, *, strict: bool = True
) -> tuple[int, int]:
    """The span of reasoning tokens the request may bill; refuses sampling settings its effort forbids."""
    if not models.is_reasoning_model(model):
        if effort is not None and strict:
            raise WireRejection(f"Unsupported parameter: '{key}' is not supported with this model.", param=key)
        return (0, 0)
    if effort is not None and (not isinstance(effort, str) or effort not in REASONING_TOKENS):
        raise WireRejection(
            f"Invalid value for '{key}': {effort!r}. Supported values are: {', '.join(REASONING_TOKENS)}.", param=key
        )
    effort = effort or models.default_reasoning_effort(model)
    temperature = body.get("temperature")
    # Reasoning models take only the default temperature unless they reason with effort "none" (gpt-5.1 on).
    if strict and effort != "none" and temperature is not None and temperature != 1:
        raise WireRejection(
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.",
            param="temperature",
        )
    return REASONING_TOKENS[str(effort)]


def _service_tier(body: dict[str, Any], model: str) -> str:
    _one_of(body, "service_tier", ("auto", "default", "flex", "priority", "scale"))
    tier = body.get("service_tier") or "auto"
    if tier == "flex" and not models.offers_flex(model):
        raise WireRejection(
            f"Invalid value for 'service_tier': flex processing is not available for {model}.", param="service_tier"
        )
    return "default" if tier == "auto" else str(tier)


def _sampling_checks(body: dict[str, Any]) -> None:
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _typed(body, "store", bool, "a boolean")
    _typed(body, "user", str, "a string")
    _typed(body, "prompt_cache_key", str, "a string")
    _typed(body, "safety_identifier", str, "a string")
    _typed(body, "parallel_tool_calls", bool, "a boolean")
    _metadata(body)
    if body.get("stream"):
        raise WireRejection(
            "Invalid 'stream': the simulator answers whole responses only; send stream false.", param="stream"
        )


_CHAT_FIELDS = frozenset(
    "model messages audio frequency_penalty function_call functions logit_bias logprobs max_completion_tokens "
    "max_tokens metadata modalities n parallel_tool_calls prediction presence_penalty prompt_cache_key "
    "reasoning_effort response_format safety_identifier seed service_tier stop store stream stream_options "
    "temperature tool_choice tools top_logprobs top_p user verbosity web_search_options".split()
)


def _chat_plan(body: dict[str, Any], state: Context, *, openrouter: bool) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireRejection("Missing required parameter: 'model'.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireRejection("Missing required parameter: 'messages' must be a non-empty array.", param="messages")
    if not openrouter:
        unknown = sorted(set(body) - _CHAT_FIELDS)
        if unknown:
            raise WireRejection(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    _sampling_checks(body)
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, -2, 2)
    _number(body, "n", 1, 128, integer=True)
    _number(body, "max_tokens", 1, integer=True)
    _number(body, "max_completion_tokens", 1, integer=True)
    _number(body, "seed", -(2**63), 2**63 - 1, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    _typed(body, "logprobs", bool, "a boolean")
    _typed(body, "logit_bias", dict, "an object")
    _one_of(body, "verbosity", ("low", "medium", "high"))
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise WireRejection(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            param="top_logprobs",
        )
    reasoning = models.is_reasoning_model(model)
    if reasoning and not openrouter and body.get("max_tokens") is not None:
        raise WireRejection(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
        )
    if body.get("audio") is not None or "audio" in (body.get("modalities") or []):
        raise WireRejection("Invalid value for 'modalities': the simulator answers text only.", param="modalities")
    if body.get("web_search_options") is not None and "search" not in model:
        raise WireRejection(
            "Invalid 'web_search_options': web search is available only on search models.", param="web_search_options"
        )
    tier = _service_tier(body, model) if not openrouter else "default"
    plan = Plan(
        dialect="openrouter" if openrouter else "openai",
        model=model,
        body=body,
        prompt_tokens=0,
        cap=state.check_cap(
            model,
            body.get("max_completion_tokens") or body.get("max_tokens"),
            "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens",
        ),
        marker_text=json.dumps(messages, ensure_ascii=False),
        counter=_counter(models.openai_encoding(model), Decimal(1)),
        n=int(body.get("n") or 1),
        reasoning=_reasoning_range(
            body, model, body.get("reasoning_effort"), "reasoning_effort", strict=not openrouter
        ),
        stops=_stops(body.get("stop"), "stop"),
        service_tier=tier,
    )
    _response_format(plan, body.get("response_format"), "response_format", messages)
    _chat_tools(plan, body)
    _prediction(body, model)
    ratio = Decimal(str(state.config.anthropic_token_ratio)) if openrouter and "claude" in model else Decimal(1)
    if ratio != 1:
        plan.counter = _counter("o200k_base", ratio)
    prompt = bill.chat_prompt(model, messages, functions=plan.functions, json_schema=plan.json_schema, ratio=ratio)
    plan.prompt_tokens = prompt.tokens
    if not openrouter:
        plan.cached_tokens = bill.cached_tokens(prompt, state.cache, model)
    return plan


def _response_format(plan: Plan, value: Any, key: str, prompt: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise WireRejection(
            f"Invalid value for '{key}.type': expected 'text', 'json_object' or 'json_schema'.", param=key
        )
    if value["type"] == "json_object":
        if not _mentions_json(prompt):
            raise WireRejection(
                f"'messages' must contain the word 'json' in some form, to use '{key}' of type 'json_object'.",
                param=key,
            )
        plan.json_object = True
    elif value["type"] == "json_schema":
        spec = value.get("json_schema") if key == "response_format" else value
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise WireRejection(f"Missing required parameter: '{key}.json_schema.name'.", param=key)
        if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
            raise WireRejection(f"Invalid type for '{key}.schema': expected an object.", param=key)
        plan.json_schema = {k: spec[k] for k in ("name", "description", "schema", "strict") if k in spec}


def _chat_tools(plan: Plan, body: dict[str, Any]) -> None:
    tools = _function_defs(body.get("tools"), "tools", flat=False)
    if body.get("functions") is not None:
        if tools:
            raise WireRejection("Invalid request: give 'tools' or the legacy 'functions', not both.", param="functions")
        if not isinstance(body["functions"], list):
            raise WireRejection("Invalid type for 'functions': expected an array.", param="functions")
        tools = _function_defs(
            [{"type": "function", "function": f} for f in body["functions"]], "functions", flat=False
        )
        plan.legacy_functions = True
    plan.functions = tools
    key = "function_call" if plan.legacy_functions else "tool_choice"
    choice = body.get(key)
    if body.get("tool_choice") is not None and not body.get("tools"):
        raise WireRejection(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    if body.get("parallel_tool_calls") is not None and not body.get("tools"):
        raise WireRejection(
            "Invalid value for 'parallel_tool_calls': only allowed when 'tools' are specified.",
            param="parallel_tool_calls",
        )
    if choice is None or choice == "auto":
        plan.tool_choice = "auto"
    elif choice == "none" or (choice == "required" and not plan.legacy_functions):
        plan.tool_choice = str(choice)
    elif isinstance(choice, dict):
        name = choice.get("name") if plan.legacy_functions else (choice.get("function") or {}).get("name")
        plan.tool_choice = _forced_tool(tools, name, key)
    else:
        raise WireRejection(f"Invalid value for '{key}': {choice!r}.", param=key)


def _prediction(body: dict[str, Any], model: str) -> None:
    prediction = body.get("prediction")
    if prediction is None:
        return
    if not isinstance(prediction, dict) or prediction.get("type") != "content":
        raise WireRejection("Invalid value for 'prediction.type': expected 'content'.", param="prediction")
    if not re.match(r"(gpt-4o|gpt-4\.1)", models.bare_model(model)):
        raise WireRejection(
            f"Invalid 'prediction': predicted outputs are not supported by model {model}.", param="prediction"
        )
    if (body.get("n") or 1) > 1 or body.get("tools") or body.get("logprobs"):
        raise WireRejection(
            "Invalid 'prediction': predicted outputs cannot be combined with n > 1, tools or logprobs.",
            param="prediction",
        )


def prediction_text(body: dict[str, Any]) -> str:
    prediction = body.get("prediction")
    if not isinstance(prediction, dict):
        return ""
    content = prediction.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


_RESPONSES_FIELDS = frozenset(
    "model input instructions max_output_tokens tools tool_choice parallel_tool_calls text reasoning temperature "
    "top_p store metadata user service_tier previous_response_id truncation include top_logprobs stream background "
    "prompt_cache_key safety_identifier max_tool_calls".split()
)


def _responses_plan(body: dict[str, Any], state: Context) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireRejection("Missing required parameter: 'model'.", param="model")
    unknown = sorted(set(body) - _RESPONSES_FIELDS)
    if unknown:
        raise WireRejection(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0])
    _sampling_checks(body)
    _number(body, "max_output_tokens", 16, integer=True)
    _number(body, "top_logprobs", 0, 20, integer=True)
    _one_of(body, "truncation", ("auto", "disabled"))
    if body.get("previous_response_id") is not None:
        raise WireRejection(
            f"Previous response with id '{body['previous_response_id']}' not found: the simulator keeps no responses.",
            param="previous_response_id",
        )
    if body.get("background"):
        raise WireRejection("Invalid 'background': the simulator answers in the foreground only.", param="background")
    messages = _responses_messages(body)
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise WireRejection("Invalid type for 'reasoning': expected an object.", param="reasoning")
    text = body.get("text")
    if text is not None and not isinstance(text, dict):
        raise WireRejection("Invalid type for 'text': expected an object.", param="text")
    plan = Plan(
        dialect="responses",
        model=model,
        body=body,
        prompt_tokens=0,
        cap=state.check_cap(model, body.get("max_output_tokens"), "max_output_tokens"),
        marker_text=json.dumps(messages, ensure_ascii=False),
        counter=_counter(models.openai_encoding(model), Decimal(1)),
        reasoning=_reasoning_range(body, model, (reasoning or {}).get("effort"), "reasoning.effort"),
        service_tier=_service_tier(body, model),
    )
    _response_format(plan, (text or {}).get("format"), "text.format", messages)
    plan.functions = _function_defs(body.get("tools"), "tools", flat=True)
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        plan.tool_choice = str(choice or "auto")
    elif isinstance(choice, dict) and choice.get("type") == "function":
        plan.tool_choice = _forced_tool(plan.functions, choice.get("name"), "tool_choice")
    else:
        raise WireRejection(f"Invalid value for 'tool_choice': {choice!r}.", param="tool_choice")
    prompt = bill.chat_prompt(model, messages, functions=plan.functions, json_schema=plan.json_schema, where="input")
    plan.prompt_tokens = prompt.tokens
    plan.cached_tokens = bill.cached_tokens(prompt, state.cache, model)
    return plan


def _responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `instructions` and `input` as chat messages, billed by the same rules."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise WireRejection("Invalid type for 'instructions': expected a string.", param="instructions")
        messages.append({"role": "developer", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise WireRejection("Missing required parameter: 'input' must be a string or a non-empty array.", param="input")
    for i, item in enumerate(given):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise WireRejection(f"Invalid type for '{at}': expected an object.", param=at)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
        elif kind == "function_call":
            call = {"name": item.get("name"), "arguments": item.get("arguments", "")}
            messages.append({"role": "assistant", "content": None, "tool_calls": [{"function": call}]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")), "content": output})
        elif kind == "reasoning":
            continue  # earlier reasoning passed back is not billed again
        else:
            raise WireRejection(
                f"Invalid value for '{at}.type': {kind!r}; the simulator takes messages and function calls.", param=at
            )
    return messages


_MESSAGES_FIELDS = frozenset(
    "model messages max_tokens system metadata stop_sequences stream temperature top_p top_k tools tool_choice "
    "thinking service_tier".split()
)


def _messages_plan(body: dict[str, Any], state: Context) -> Plan:
    unknown = sorted(set(body) - _MESSAGES_FIELDS)
    if unknown:
        raise WireRejection(f"{unknown[0]}: Extra inputs are not permitted", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireRejection("model: Field required", param="model")
    if "max_tokens" not in body:
        raise WireRejection("max_tokens: Field required", param="max_tokens")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise WireRejection("max_tokens: Input should be an integer greater than or equal to 1", param="max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireRejection("messages: Field required (a non-empty list)", param="messages")
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise WireRejection(f"{key}: range: 0..1", param=key)
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise WireRejection("top_k: Input should be a non-negative integer", param="top_k")
    if body.get("stream"):
        raise WireRejection("stream: the simulator answers whole messages only", param="stream")
    if body.get("service_tier") not in (None, "auto", "standard_only"):
        raise WireRejection("service_tier: Input should be 'auto' or 'standard_only'", param="service_tier")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise WireRejection("metadata: only user_id is permitted", param="metadata")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) and s.strip() for s in stops)):
        raise WireRejection("stop_sequences: Input should be a list of non-whitespace strings", param="stop_sequences")
    reasoning = _thinking(body, max_tokens)
    ratio = Decimal(str(state.config.anthropic_token_ratio))
    count = bill.anthropic_input(model, body, ratio)
    plan = Plan(
        dialect="anthropic",
        model=model,
        body=body,
        prompt_tokens=count.tokens,
        cap=state.check_cap(model, max_tokens, "max_tokens"),
        marker_text=json.dumps([body.get("system"), messages], ensure_ascii=False),
        counter=_counter("o200k_base", ratio),
        reasoning=reasoning,
        stops=list(stops or []),
    )
    tools = body.get("tools") or []
    plan.functions = [
        {"name": t["name"], "description": t.get("description", ""), "parameters": t.get("input_schema")} for t in tools
    ]
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise WireRejection(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'", param="tool_choice"
            )
        if not tools and choice["type"] != "none":
            raise WireRejection("tool_choice may only be specified while providing tools.", param="tool_choice")
        kind = choice["type"]
        plan.tool_choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or _forced_tool(
            plan.functions, choice.get("name"), "tool_choice.name"
        )
    least = ANTHROPIC_HAIKU_CACHE_MIN if "haiku" in model else ANTHROPIC_CACHE_MIN
    if count.cache_prefix_tokens >= least:
        if state.cache.seen(count.cache_digest, ttl_s=max(state.cache.ttl_s, count.cache_ttl_s)):
            plan.cached_tokens = count.cache_prefix_tokens
        else:
            plan.cache_write_tokens = count.cache_prefix_tokens
            plan.cache_write_1h = count.cache_ttl_s > 300
        state.cache.remember(count.cache_digest)
    return plan


def _thinking(body: dict[str, Any], max_tokens: int) -> tuple[int, int]:
    thinking = body.get("thinking")
    if thinking is None:
        return (0, 0)
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise WireRejection("thinking.type: Input should be 'enabled' or 'disabled'", param="thinking")
    if thinking["type"] == "disabled":
        return (0, 0)
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1024:
        raise WireRejection(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024", param="thinking"
        )
    if budget >= max_tokens:
        raise WireRejection("`max_tokens` must be greater than `thinking.budget_tokens`", param="max_tokens")
    if body.get("temperature") not in (None, 1):
        raise WireRejection("`temperature` may only be set to 1 when thinking is enabled.", param="temperature")
    return (min(256, budget), budget)


def plan_for(endpoint: str, path: str, body: dict[str, Any], state: Context) -> Plan:
    """The plan of a request to `endpoint` (`chat`, `responses` or `messages`) at `path`."""
    if endpoint == "messages":
        return _messages_plan(body, state)
    if endpoint == "responses":
        return _responses_plan(body, state)
    openrouter = path.startswith("/api/") or bool(OPENROUTER_FIELDS & set(body))
    return _chat_plan(body, state, openrouter=openrouter)
