"""OpenRouter: the OpenAI format plus its `provider` routing object and the `usage.cost` it reports."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Any

from batchrouter.core.config import ProviderConfig
from batchrouter.execution.providers.base import RequestItem
from batchrouter.execution.providers.openai import OpenAIAdapter


class OpenRouterAdapter(OpenAIAdapter):
    default_base_url = "https://openrouter.ai/api/v1"

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        api_key: str | None,
        base_url: str | None = None,
        deny_training: bool = False,
        zero_retention: bool = False,
    ) -> None:
        super().__init__(name, config, api_key=api_key, base_url=base_url)
        self.deny_training = deny_training
        self.zero_retention = zero_retention

    def body(self, item: RequestItem, upstream: str) -> dict[str, Any]:
        body = super().body(item, upstream)
        # OpenRouter must not quietly send the item to an upstream the workspace's policy forbids.
        provider: dict[str, Any] = {"allow_fallbacks": True, "require_parameters": True}
        if self.deny_training:
            provider["data_collection"] = "deny"
        if self.zero_retention:
            provider["zdr"] = True
        if item.max_price is not None:
            # USD per million tokens = pico-dollars per token / 10^6.
            provider["max_price"] = {
                "prompt": float(Decimal(item.max_price[0]) / 10**6),
                "completion": float(Decimal(item.max_price[1]) / 10**6),
            }
        body["provider"] = provider
        body["usage"] = {"include": True}
        return body

    def reported_cost(self, usage: Mapping[str, Any]) -> int | None:
        cost = usage.get("cost")
        if cost is None:
            return None
        micros = Decimal(str(cost)) * 10**6
        return int(micros.to_integral_value(rounding=ROUND_CEILING))
