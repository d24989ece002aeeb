"""The dispatcher's per-route rules and its run-time settings, without a network (faults: tests/integration)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import DispatchConfig, ModelConfig, ProviderConfig, RoutePolicy, Settings
from batchrouter.execution.dispatch import GC_YOUNG_THRESHOLD, Dispatcher, Route, quiet_collector
from batchrouter.execution.providers import AnthropicAdapter, OpenAIAdapter, RateLimits, RequestItem

MINI = "openai:gpt-4o-mini"


def route(rpm: int, tpm: int = 2_000_000) -> Route:
    provider = ProviderConfig(kind="simulator", wire="openai", base_url="http://127.0.0.1:9/v1", rpm=rpm, tpm=tpm)
    adapter = OpenAIAdapter("openai", provider, api_key="sim-key")
    return Route(MINI, load_catalog().entry(MINI), adapter, provider, DispatchConfig())


def test_a_learned_lower_limit_replaces_the_configured_one_and_leaves_no_burst_of_it() -> None:
    r = route(rpm=180_000)
    assert r.rpm.level > 1000  # a second's worth of the configured 3,000/s
    r.learn(RateLimits(requests_per_minute=60_000))
    assert r.rpm.per_minute == pytest.approx(60_000 * 0.98)
    # What was left of the higher limit's burst was already counted in the provider's window.
    assert r.rpm.level <= 0


def test_the_margin_under_an_announced_limit_equal_to_ours_keeps_the_burst_the_provider_also_grants() -> None:
    r = route(rpm=60_000)
    level = r.rpm.level
    assert level > 900
    r.learn(RateLimits(requests_per_minute=60_000))
    assert r.rpm.per_minute == pytest.approx(60_000 * 0.98)
    # Counted at the provider's own rate, what is left is left in its window too: only capped to the lower capacity.
    assert r.rpm.level == pytest.approx(min(level, r.rpm.capacity), abs=1.0)
    assert r.rpm.level > 900


def test_an_announced_limit_above_the_configured_one_changes_nothing() -> None:
    r = route(rpm=30_000)
    level = r.rpm.level
    r.learn(RateLimits(requests_per_minute=60_000, tokens_per_minute=10**9))
    assert r.rpm.per_minute == 30_000
    assert r.tpm.per_minute == 2_000_000
    assert r.rpm.level == pytest.approx(level, abs=1.0)


def test_limits_are_read_from_aiohttp_headers_whatever_their_case() -> None:
    # aiohttp hands the adapters a case-insensitive CIMultiDictProxy, spelled as the server wrote it.
    headers = CIMultiDictProxy(
        CIMultiDict({"X-RateLimit-Limit-Requests": "500", "X-RateLimit-Limit-Tokens": "80000", "X-Request-ID": "r1"})
    )
    adapter = OpenAIAdapter("openai", ProviderConfig(kind="openai"), api_key="k")
    limits = adapter.rate_limits(headers)
    assert (limits.requests_per_minute, limits.tokens_per_minute) == (500, 80_000)
    assert adapter.request_id(headers) == "r1"
    r = route(rpm=6_000)
    r.learn(limits)
    assert r.rpm.per_minute == pytest.approx(490)
    assert r.tpm.per_minute == pytest.approx(78_400)


@pytest.mark.parametrize("adapter_class", [OpenAIAdapter, AnthropicAdapter])
def test_every_request_of_an_adapter_carries_the_same_headers(adapter_class: type[OpenAIAdapter]) -> None:
    adapter = adapter_class("p", ProviderConfig(kind="openai"), api_key="k")
    first = adapter.build(RequestItem("a", [{"role": "user", "content": "hi"}], 8), "m")
    second = adapter.build(RequestItem("b", [{"role": "user", "content": "yo"}], 8), "m")
    assert first.headers is second.headers  # built once; the dispatcher converts them once per route
    assert first.body != second.body


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_the_collector_is_quiet_during_a_dispatch_and_as_before_after_it(thresholds: tuple[int, int, int]) -> None:
    frozen_before = gc.get_freeze_count()
    with quiet_collector():
        assert gc.get_threshold()[0] == max(thresholds[0], GC_YOUNG_THRESHOLD)
        assert gc.get_threshold()[1:] == thresholds[1:]
        assert gc.get_freeze_count() > frozen_before  # what was alive before the run is not rescanned
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == 0


def test_overlapping_dispatches_restore_the_collector_only_when_the_last_ends(
    thresholds: tuple[int, int, int],
) -> None:
    first, second = quiet_collector(), quiet_collector()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold()[0] == max(thresholds[0], GC_YOUNG_THRESHOLD)  # the second still runs
    second.__exit__(None, None, None)
    assert gc.get_threshold() == thresholds


def test_the_routes_of_one_provider_share_its_max_concurrency() -> None:
    # One self-hosted server serving two models takes `max_concurrency` requests at once, not that per model.
    models = [ModelConfig(name=n, provider="gpu", upstream=n, input_usd_per_mtok=0, output_usd_per_mtok=0,
                          context_window=8192, max_output_tokens=1024, tokenizer="estimate")
              for n in ("m-a", "m-b")]  # fmt: skip
    gpu = ProviderConfig(kind="openai_compatible", base_url="http://127.0.0.1:9/v1", max_concurrency=8)
    settings = Settings(providers={"gpu": gpu}, models=models)

    async def slots() -> tuple[asyncio.Semaphore, ...]:
        dispatcher = Dispatcher(settings=settings, catalog=load_catalog(models), policy=RoutePolicy(),
                                on_result=lambda result: None)  # fmt: skip
        try:
            return tuple(dispatcher._route(name).slots for name in ("gpu:m-a", "gpu:m-b", MINI))
        finally:
            for pump in dispatcher.pumps:
                pump.cancel()
            await asyncio.gather(*dispatcher.pumps, return_exceptions=True)
            for session in dispatcher.sessions.values():
                await session.close()

    first, second, other = asyncio.run(slots())
    assert first is second and other is not first
    assert first._value == 8  # noqa: SLF001 - the semaphore's free slots: the provider's limit, once


def test_a_job_s_input_hash_is_of_the_item_as_validated_whatever_tier_it_is_sent_at() -> None:
    import hashlib
    import json
    from dataclasses import replace

    import polars as pl

    from batchrouter.execution.dispatch import jobs_from_routed

    row = {"row": 0, "item_id": "a", "model": "gpt-5-mini", "route": "openai:gpt-5-mini", "fallbacks": [],
           "input_tokens": 12, "output_cap": 32, "reserve_usd_micros": 90, "expected_usd_micros": 40,
           "lane": "flex", "system": "Be brief.", "prompt": "Hello", "messages": None, "temperature": 0.2,
           "metadata": None, "params": json.dumps({"seed": 7}), "n": 2, "endpoint": "chat"}  # fmt: skip
    (job,) = jobs_from_routed(pl.DataFrame([row]))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert job.request.messages == messages
    expected = hashlib.sha256(
        json.dumps([messages, {"seed": 7}, 0.2, 2], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    # Asked for flex on the way, then refused and sent on at the standard tier: the hash stays the item's.
    job.request = replace(job.request, params={"seed": 7, "service_tier": "flex"})
    assert job.inputs_sha256() == expected
    job.request = replace(job.request, params={"seed": 7})
    assert job.inputs_sha256() == expected == job.input_sha256
