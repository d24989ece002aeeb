"""Provider adapters, one per file, under `ProviderAdapter`; `adapter_for` picks one from config."""

from __future__ import annotations

import os

from batchrouter.core.config import ProviderConfig, RoutePolicy
from batchrouter.execution.providers.anthropic import AnthropicAdapter
from batchrouter.execution.providers.base import Completion, PreparedRequest, ProviderAdapter, RateLimits, RequestItem
from batchrouter.execution.providers.openai import OpenAIAdapter, RefusedError
from batchrouter.execution.providers.openai_compatible import OpenAICompatibleAdapter
from batchrouter.execution.providers.openrouter import OpenRouterAdapter

SIMULATOR_KEY = "sim-key"

__all__ = [
    "AnthropicAdapter",
    "Completion",
    "OpenAIAdapter",
    "OpenAICompatibleAdapter",
    "OpenRouterAdapter",
    "PreparedRequest",
    "ProviderAdapter",
    "RateLimits",
    "RefusedError",
    "RequestItem",
    "adapter_for",
]


def adapter_for(
    name: str, config: ProviderConfig, *, policy: RoutePolicy | None = None, simulator_url: str | None = None
) -> ProviderAdapter:
    """The adapter for provider `name`; `simulator_url` is where a simulator provider without base_url goes."""
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    policy = policy or RoutePolicy()
    if config.kind == "simulator":
        base = config.base_url or simulator_url
        wire = config.wire or (
            "anthropic" if name == "anthropic" else "openrouter" if name == "openrouter" else "openai"
        )
        key = SIMULATOR_KEY  # never send a real key to the simulator
        if wire == "anthropic":
            return AnthropicAdapter(name, config, api_key=key, base_url=base)
        if wire == "openrouter":
            return OpenRouterAdapter(
                name,
                config,
                api_key=key,
                base_url=base,
                deny_training=policy.deny_training,
                zero_retention=policy.zero_retention,
            )
        return OpenAIAdapter(name, config, api_key=key, base_url=base)
    if config.kind == "anthropic":
        return AnthropicAdapter(name, config, api_key=api_key)
    if config.kind == "openrouter":
        return OpenRouterAdapter(
            name, config, api_key=api_key, deny_training=policy.deny_training, zero_retention=policy.zero_retention
        )
    if config.kind == "openai_compatible":
        return OpenAICompatibleAdapter(name, config, api_key=api_key)
    return OpenAIAdapter(name, config, api_key=api_key)
