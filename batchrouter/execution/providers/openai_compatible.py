"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp): Chat Completions at a configured base URL."""

from __future__ import annotations

from typing import Any, ClassVar

from batchrouter.execution.providers.base import RequestItem
from batchrouter.execution.providers.openai import OpenAIAdapter


class OpenAICompatibleAdapter(OpenAIAdapter):
    default_base_url: ClassVar[str | None] = None  # there is no default: the server is yours

    def body(self, item: RequestItem, upstream: str) -> dict[str, Any]:
        body = super().body(item, upstream)
        # Several servers still only read the older name of the output cap.
        body["max_tokens"] = body.pop("max_completion_tokens")
        return body
