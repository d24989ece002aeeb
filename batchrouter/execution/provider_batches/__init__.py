"""Provider batch clients, one per wire, under `BatchClient`; `batch_client_for` picks one from config.

- `base`: the values (`BatchLine`, `BatchLimits`, `BatchStatus`, `ProviderBatch`, `LineResult`), the
  client base (planning, retries, idempotent create) and `batch_client_for`;
- `openai`: OpenAI's Files + Batch API; `anthropic`: Anthropic's Message Batches.
"""

from batchrouter.execution.provider_batches.anthropic import AnthropicBatchClient
from batchrouter.execution.provider_batches.base import (
    CUSTOM_ID,
    IDEMPOTENCY_KEY,
    BatchClient,
    BatchLimits,
    BatchLine,
    BatchStatus,
    LineResult,
    Outcome,
    ProviderBatch,
    batch_client_for,
)
from batchrouter.execution.provider_batches.openai import OpenAIBatchClient

__all__ = [
    "CUSTOM_ID",
    "IDEMPOTENCY_KEY",
    "AnthropicBatchClient",
    "BatchClient",
    "BatchLimits",
    "BatchLine",
    "BatchStatus",
    "LineResult",
    "OpenAIBatchClient",
    "Outcome",
    "ProviderBatch",
    "batch_client_for",
]
