"""Provider batch clients without a network: planning, the checks before a submit, picking a client and its limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrouter.core.config import ProviderConfig, SimulatorConfig
from batchrouter.core.errors import BatchCapacityError, ConfigError, TerminalError
from batchrouter.execution.provider_batches import (
    AnthropicBatchClient,
    BatchClient,
    BatchLimits,
    BatchLine,
    BatchStatus,
    OpenAIBatchClient,
    batch_client_for,
)
from batchrouter.execution.providers import RequestItem

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-20250514"}


def make(wire: str, limits: BatchLimits | None = None) -> BatchClient:
    return batch_client_for(wire, ProviderConfig(kind=wire), limits=limits)  # type: ignore[arg-type]


def line(i: int, *, words: int = 3, model: str = "gpt-4o-mini", tokens: int = 10) -> BatchLine:
    text = " ".join(["word"] * words) + f" {i}"
    return BatchLine(f"c{i}", RequestItem(f"i{i}", [{"role": "user", "content": text}], 16), model, tokens)


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40),
    max_requests=st.integers(min_value=1, max_value=8),
    max_bytes=st.integers(min_value=400, max_value=2000),
)
def test_plan_keeps_every_line_once_in_order_and_each_batch_fits_and_is_full(
    wire: str, sizes: list[int], max_requests: int, max_bytes: int
) -> None:
    client = make(wire, BatchLimits(max_requests=max_requests, max_bytes=max_bytes))
    lines = [line(i, words=n, model=MODELS[wire]) for i, n in enumerate(sizes)]
    chunks = client.plan(lines)
    assert [x for chunk in chunks for x in chunk] == lines
    for chunk, following in zip(chunks, chunks[1:] + [[]], strict=True):
        sent = len(client.payload(chunk))
        if len(chunk) > 1:  # a line over the limit on its own goes alone
            assert len(chunk) <= max_requests and sent <= max_bytes
        if following:  # greedy: the next line did not fit
            assert len(chunk) == max_requests or len(client.payload([*chunk, following[0]])) > max_bytes


def test_plan_gives_each_openai_model_its_own_batches_within_its_enqueued_tokens() -> None:
    limits = BatchLimits(max_requests=100, max_bytes=10**6, enqueued_tokens={"gpt-4o-mini": 25})
    client = make("openai", limits)
    small = [line(i, tokens=10) for i in range(5)]
    other = [line(10 + i, model="gpt-4.1", tokens=10) for i in range(5)]
    chunks = client.plan([small[0], other[0], *small[1:], *other[1:]])
    assert [[x.custom_id for x in chunk] for chunk in chunks] == [
        ["c0", "c1"],
        ["c2", "c3"],
        ["c4"],
        ["c10", "c11", "c12", "c13", "c14"],  # no limit for gpt-4.1
    ]


def test_anthropic_batches_mix_models_and_have_no_enqueued_token_limit() -> None:
    client = make("anthropic", BatchLimits(max_requests=100, max_bytes=10**6, enqueued_tokens={"claude": 1}))
    lines = [line(0, model="claude"), line(1, model="claude-haiku"), line(2, model="claude")]
    assert client.plan(lines) == [lines]


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ([], "empty_batch"),
        ([BatchLine("has space", line(0).item, "gpt-4o-mini", 1)], "invalid_custom_id"),
        ([BatchLine("x" * 65, line(0).item, "gpt-4o-mini", 1)], "invalid_custom_id"),
        ([line(0), line(0)], "duplicate_custom_id"),
        ([line(0), line(1, model="gpt-4.1")], "mixed_models"),
        ([line(i) for i in range(4)], "batch_too_large"),
    ],
)
def test_a_batch_the_provider_would_refuse_is_refused_before_sending(lines: list[BatchLine], code: str) -> None:
    client = make("openai", BatchLimits(max_requests=3, max_bytes=10**6))
    with pytest.raises(TerminalError) as info:
        client.check(lines)
    assert info.value.code == code


def test_batch_client_for_picks_the_wire_and_the_providers_published_limits() -> None:
    openai, anthropic = make("openai"), make("anthropic")
    assert isinstance(openai, OpenAIBatchClient) and openai.adapter.base_url == "https://api.openai.com/v1"
    assert (openai.limits.max_requests, openai.limits.max_bytes) == (50_000, 200_000_000)
    assert isinstance(anthropic, AnthropicBatchClient) and anthropic.adapter.base_url == "https://api.anthropic.com/v1"
    assert (anthropic.limits.max_requests, anthropic.limits.max_bytes) == (100_000, 256_000_000)
    assert anthropic.headers()["anthropic-version"] == "2023-06-01"
    simulated = batch_client_for("anthropic", ProviderConfig(kind="simulator"), simulator_url="http://127.0.0.1:1/v1")
    assert isinstance(simulated, AnthropicBatchClient) and simulated.headers()["x-api-key"] == "sim-key"


def test_a_provider_without_a_batch_api_has_no_batch_client() -> None:
    with pytest.raises(ConfigError):
        batch_client_for("openrouter", ProviderConfig(kind="openrouter"))
    with pytest.raises(ConfigError):
        batch_client_for("local", ProviderConfig(kind="openai_compatible", base_url="http://127.0.0.1:1/v1"))


def test_limits_come_from_the_provider_then_the_simulator_then_the_defaults() -> None:
    sim = SimulatorConfig(batch_max_requests=7, batch_max_bytes=9000, batch_enqueued_tokens_per_model={"m": 50})
    config = ProviderConfig(kind="simulator", wire="openai", batch_max_requests=3, batch_enqueued_tokens=99)
    client = batch_client_for("openai", config, simulator_url="http://127.0.0.1:1/v1", simulator=sim)
    assert (client.limits.max_requests, client.limits.max_bytes) == (3, 9000)
    assert (client.limits.enqueued_limit("m"), client.limits.enqueued_limit("other")) == (50, 99)
    real = batch_client_for("openai", ProviderConfig(kind="openai"), simulator=sim)
    assert real.limits.max_requests == 50_000 and real.limits.enqueued_limit("m") is None


def test_an_openai_batch_failed_for_enqueued_tokens_carries_a_retryable_capacity_error() -> None:
    client = make("openai")
    assert isinstance(client, OpenAIBatchClient)
    raw = {
        "id": "batch_1",
        "status": "failed",
        "created_at": 10,
        "failed_at": 12,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "errors": {"data": [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached", "line": None}]},
    }
    batch = client.batch(raw)
    assert batch.status is BatchStatus.FAILED and batch.ended and batch.ended_at == 12
    assert isinstance(batch.error, BatchCapacityError) and batch.error.retryable
    refused = client.batch({**raw, "errors": {"data": [{"code": "empty_file", "message": "no lines", "line": None}]}})
    assert isinstance(refused.error, TerminalError) and refused.error.code == "empty_file"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ({"processing_status": "in_progress"}, BatchStatus.IN_PROGRESS),
        ({"processing_status": "canceling", "cancel_initiated_at": "2026-01-01T00:00:00Z"}, BatchStatus.CANCELLING),
        ({"processing_status": "ended", "cancel_initiated_at": "2026-01-01T00:00:00Z"}, BatchStatus.CANCELLED),
        ({"processing_status": "ended", "request_counts": {"succeeded": 2, "expired": 1}}, BatchStatus.EXPIRED),
        ({"processing_status": "ended", "request_counts": {"succeeded": 2, "errored": 1}}, BatchStatus.COMPLETED),
    ],
)
def test_anthropic_processing_status_maps_onto_batch_status(raw: dict[str, object], status: BatchStatus) -> None:
    client = make("anthropic")
    assert isinstance(client, AnthropicBatchClient)
    batch = client.batch({"id": "msgbatch_1", "created_at": "2026-01-01T00:00:00Z", **raw})
    assert batch.status is status and batch.provider_status == raw["processing_status"]
    assert batch.created_at == 1767225600.0
