"""The dispatcher over real HTTP against the simulator: every fault kind recovers or ends in a precise failure."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from decimal import ROUND_CEILING, Decimal
from typing import Any

import pytest

from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import RoutePolicy, SimulatorConfig, load_settings
from batchrouter.execution.checkpoint import ItemResult
from batchrouter.execution.dispatch import Dispatcher, Job
from batchrouter.execution.providers import OpenAIAdapter, RequestItem
from batchrouter.simulator import running_simulator

pytestmark = pytest.mark.integration

MINI = "openai:gpt-4o-mini"
MINI_OPENROUTER = "openrouter:openai/gpt-4o-mini"
HAIKU = "anthropic:claude-haiku-4-5-20251001"
TRICKLE_S = 1.0
# Quick back-off; a breaker that never opens unless a test asks for it (with no fallback, an open breaker
# holds items for its cooldown); a stall timeout generous enough for a loaded machine, shortened by stall tests.
FAST = {
    "backoff_base_s": 0.01,
    "backoff_max_s": 0.05,
    "stall_timeout_s": 2.0,
    "max_attempts": 3,
    "breaker_failures": 1000,
}
STALL_S = 0.5


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    config = SimulatorConfig(latency_ms=5, latency_shape="fixed", trickle_seconds=TRICKLE_S, max_output_words=20)
    with running_simulator(config) as url:
        yield url


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[str]:
    """A simulator allowing 120 requests per minute (2 per second, a burst of 2)."""
    with running_simulator(SimulatorConfig(latency_ms=5, latency_shape="fixed", rpm=120, max_output_words=20)) as url:
        yield url


def dead_url() -> str:
    """A loopback URL nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url.replace("/v1", "/_stats"), timeout=5) as r:
        return dict(json.loads(r.read()))


def job(prompt: str, chain: list[str] | None = None) -> Job:
    """A job whose prompt is unique to this call, so the simulator's per-item fault counts start at zero."""
    item_id = uuid.uuid4().hex
    text = f"{prompt} (item {item_id})"
    chain = chain or [MINI]
    model = "claude-haiku-4-5" if chain[0] == HAIKU else "gpt-4o-mini"
    return Job(
        item_id=item_id,
        model=model,
        request=RequestItem(item_id, [{"role": "user", "content": text}], 16, 0.2),
        chain=chain,
        estimate_tokens=64,
        reserve_usd_micros=100,
        input_sha256="",
    )


def providers(url: str, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {
        name: {"kind": "simulator", "wire": wire, "base_url": url}
        for name, wire in (("openai", "openai"), ("anthropic", "anthropic"), ("openrouter", "openrouter"))
    }
    for name, values in overrides.items():
        found[name] = {**found[name], **values}
    return found


def dispatch(
    url: str, jobs: list[Job], *, dispatch_cfg: dict[str, Any] | None = None, **provider_overrides: dict[str, Any]
) -> tuple[list[ItemResult], Dispatcher]:
    settings = load_settings(providers=providers(url, **provider_overrides), dispatch={**FAST, **(dispatch_cfg or {})})
    results: list[ItemResult] = []
    dispatcher = Dispatcher(
        settings=settings, catalog=load_catalog(), policy=RoutePolicy(), on_result=results.append, seed=1
    )

    async def run() -> None:
        await asyncio.wait_for(dispatcher.run(jobs), timeout=30)  # a hang fails the test, never the suite

    asyncio.run(run())
    return results, dispatcher


def only(results: list[ItemResult]) -> ItemResult:
    assert len(results) == 1
    return results[0]


# -- flex refused for capacity ----------------------------------------------------------------------

FLEX = "openai:gpt-5-mini"  # sells flex


def flex_job(prompt: str, *, flex_until: float | None) -> Job:
    made = job(prompt, [FLEX])
    made.model = "gpt-5-mini"
    made.request = replace(made.request, params={"service_tier": "flex"}, temperature=None)  # gpt-5: default only
    made.flex_until = flex_until
    return made


@pytest.mark.parametrize(
    ("marker", "time_left_s", "lane", "refused"),
    [
        ("[[sim:flexbusy*2]]", 600.0, "flex", 2),  # asked again on flex, answered there at the batch price
        ("[[sim:flexbusy*2]]", None, "online", 1),  # no hedge time: at once at the standard tier
        ("[[sim:flexbusy*2]]", -1.0, "online", 1),  # its hedge time has passed: the same
        ("[[sim:flexbusy]]", 600.0, "online", 4),  # refused each time: the standard tier after 3 more tries
    ],
)
def test_a_flex_request_refused_for_capacity_is_asked_again_on_flex_while_its_hedge_time_allows(
    sim: str, marker: str, time_left_s: float | None, lane: str, refused: int
) -> None:
    until = None if time_left_s is None else time.time() + time_left_s
    results, dispatcher = dispatch(sim, [flex_job(f"Summarise this {marker}", flex_until=until)],
                                   dispatch_cfg={"flex_retries": 3})  # fmt: skip
    result = only(results)
    assert result.status == "succeeded" and result.lane == lane
    assert result.attempts == refused + 1
    entry = load_catalog().entry(FLEX)
    tier = "flex" if lane == "flex" else None
    assert result.cost_usd_micros == entry.cost_micros(result.input_tokens, result.output_tokens,
                                                       cached=result.cached_tokens, tier=tier)  # fmt: skip
    health = dispatcher.routes[FLEX].health
    assert (health.flex_refused, health.rate_limited) == (refused, 0)


# -- faults that recover ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "attempts"),
    [
        ("[[sim:500*2]]", 3),
        ("[[sim:stall*1]]", 2),
        ("[[sim:truncate*1]]", 2),
        ("[[sim:malformed*1]]", 2),
    ],
)
def test_transient_fault_recovers_on_retry(sim: str, marker: str, attempts: int) -> None:
    result = only(dispatch(sim, [job(f"Summarise this {marker}")], dispatch_cfg={"stall_timeout_s": STALL_S})[0])
    assert result.status == "succeeded", result.error_message
    assert result.attempts == attempts
    assert result.output_text
    assert result.error_code is None
    assert result.route == MINI
    assert result.fallbacks_used == 0


def test_anthropic_overloaded_recovers_on_retry(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello [[sim:500*2]]", [HAIKU])])[0])
    assert result.status == "succeeded", result.error_message
    assert result.attempts == 3
    assert result.finish_reason in ("stop", "length")


def test_429s_are_absorbed_without_spending_the_attempt_budget(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello [[sim:429*2]]")], dispatch_cfg={"max_attempts": 1})[0])
    assert result.status == "succeeded", result.error_message
    assert result.rate_limited == 2
    assert result.attempts == 3


def test_slow_trickled_body_within_the_timeout_succeeds(sim: str) -> None:
    # The body takes TRICKLE_S, twice the stall timeout, but bytes keep coming: not a stall.
    cfg = {"max_attempts": 1, "stall_timeout_s": STALL_S}
    result = only(dispatch(sim, [job("Hello [[sim:trickle]]")], dispatch_cfg=cfg)[0])
    assert result.status == "succeeded", result.error_message
    assert result.attempts == 1
    assert result.latency_ms is not None
    assert result.latency_ms >= TRICKLE_S * 1000 * 0.9


# -- faults that end the item -----------------------------------------------------------------------


def test_400_fails_at_once_with_the_provider_message(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello [[sim:400]]")])[0])
    assert result.status == "failed"
    assert result.error_code == "http_400"
    assert result.attempts == 1
    assert result.error_message is not None
    assert "Invalid value for 'messages': simulated rejection" in result.error_message
    assert result.cost_usd_micros == 0


@pytest.mark.parametrize("route", [MINI, HAIKU])
def test_refusal_fails_with_the_prompt_tokens_billed(sim: str, route: str) -> None:
    result = only(dispatch(sim, [job("Do something bad [[sim:refuse]]", [route])])[0])
    assert result.status == "failed"
    assert result.error_code == "refused"
    assert result.attempts == 1
    assert result.input_tokens > 0
    assert result.output_tokens == 0
    assert result.cost_usd_micros > 0
    assert result.cost_source == "catalog"
    assert result.provider_request_id


@pytest.mark.parametrize(("route", "code"), [(MINI, "http_500"), (HAIKU, "overloaded")])
def test_persistent_server_error_fails_after_max_attempts(sim: str, route: str, code: str) -> None:
    result = only(dispatch(sim, [job("Hello [[sim:500]]", [route])])[0])
    assert result.status == "failed"
    assert result.error_code == code
    assert result.attempts == FAST["max_attempts"]
    assert result.cost_usd_micros == 0


def test_persistent_stall_fails_as_stalled(sim: str) -> None:
    cfg = {"max_attempts": 2, "stall_timeout_s": STALL_S}
    result = only(dispatch(sim, [job("Hello [[sim:stall]]")], dispatch_cfg=cfg)[0])
    assert result.status == "failed"
    assert result.error_code == "stalled"
    assert result.attempts == 2


def test_persistently_truncated_body_fails_as_truncated_body(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello [[sim:truncate]]")], dispatch_cfg={"max_attempts": 2})[0])
    assert result.status == "failed"
    assert result.error_code == "truncated_body"
    assert result.attempts == 2


def test_persistently_garbled_body_fails_as_a_body_error(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello [[sim:malformed]]")], dispatch_cfg={"max_attempts": 2})[0])
    assert result.status == "failed"
    # Half a JSON document then "<html>oops": whether it reads as cut or as garbled depends on where the cut fell.
    assert result.error_code in ("truncated_body", "malformed_body")
    assert result.attempts == 2


def test_trickle_longer_than_the_request_timeout_fails_as_timeout(sim: str) -> None:
    result = only(
        dispatch(
            sim, [job("Hello [[sim:trickle]]")], dispatch_cfg={"max_attempts": 2}, openai={"timeout_s": TRICKLE_S / 3}
        )[0]
    )
    assert result.status == "failed"
    assert result.error_code == "timeout"
    assert result.attempts == 2


def test_unexpected_adapter_error_fails_the_item_instead_of_hanging_the_run(
    sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_parse(self: OpenAIAdapter, status: int, headers: Any, body: bytes) -> Any:
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(OpenAIAdapter, "parse", broken_parse)
    result = only(dispatch(sim, [job("Hello")])[0])
    assert result.status == "failed"
    assert result.error_code == "internal_error"
    assert result.error_message is not None and "RuntimeError: adapter bug" in result.error_message
    assert result.attempts == 1


# -- fallbacks and the breaker ----------------------------------------------------------------------


def test_unreachable_route_falls_back_to_the_next_in_the_chain(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello", [MINI, MINI_OPENROUTER])], openai={"base_url": dead_url()})[0])
    assert result.status == "succeeded", result.error_message
    assert result.route == MINI_OPENROUTER
    assert result.provider == "openrouter"
    assert result.fallbacks_used == 1
    assert result.attempts == FAST["max_attempts"] + 1


def test_route_failing_persistently_falls_back_to_the_next_in_the_chain(sim: str) -> None:
    with running_simulator(SimulatorConfig(latency_ms=0, error_rate=1.0)) as broken:
        results, _ = dispatch(
            sim, [job("Hello", [MINI, MINI_OPENROUTER])], dispatch_cfg={"max_attempts": 2}, openai={"base_url": broken}
        )
        assert stats(broken)["requests"] == 2
    result = only(results)
    assert result.status == "succeeded", result.error_message
    assert result.route == MINI_OPENROUTER
    assert result.fallbacks_used == 1


def test_last_route_failing_ends_the_item_with_the_last_error(sim: str) -> None:
    result = only(
        dispatch(
            sim,
            [job("Hello", [MINI, MINI_OPENROUTER])],
            openai={"base_url": dead_url()},
            openrouter={"base_url": dead_url()},
        )[0]
    )
    assert result.status == "failed"
    assert result.error_code == "connection_error"
    assert result.fallbacks_used == 1
    assert result.attempts == 2 * FAST["max_attempts"]
    assert result.error_message is not None
    assert MINI in result.error_message and MINI_OPENROUTER in result.error_message


def test_unauthorized_route_moves_to_the_fallback_after_one_attempt(sim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHROUTER_TEST_UNSET_KEY", raising=False)
    # A real-kind provider whose key variable is unset sends no key: the simulator answers 401.
    openai = {"kind": "openai", "wire": None, "api_key_env": "BATCHROUTER_TEST_UNSET_KEY"}
    result = only(dispatch(sim, [job("Hello", [MINI, MINI_OPENROUTER])], openai=openai)[0])
    assert result.status == "succeeded", result.error_message
    assert result.route == MINI_OPENROUTER
    assert result.attempts == 2


def test_breaker_opens_after_breaker_failures_and_moves_queued_items_to_the_fallback(sim: str) -> None:
    jobs = [job(f"Item {i}", [MINI, MINI_OPENROUTER]) for i in range(8)]
    results, dispatcher = dispatch(
        sim,
        jobs,
        dispatch_cfg={"breaker_failures": 3, "breaker_cooldown_s": 60, "max_attempts": 4},
        openai={"base_url": dead_url(), "max_concurrency": 1},
    )
    health = dispatcher.routes[MINI].health
    # One request at a time: three failures open it; the item the admission loop already holds goes out too.
    # Without the breaker: 8 items x 4 attempts.
    assert 3 <= health.requests <= 4
    assert health.breaker_trips == 1
    assert health.moved_to_fallback == 8
    assert all(r.status == "succeeded" and r.route == MINI_OPENROUTER and r.fallbacks_used == 1 for r in results)


# -- costs, rate limits, one result per job ---------------------------------------------------------


def test_openrouter_route_reports_the_provider_cost(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello", [MINI_OPENROUTER])])[0])
    assert result.status == "succeeded"
    assert result.cost_source == "provider"
    usd = (result.input_tokens * Decimal("0.15") + result.output_tokens * Decimal("0.60")) / 10**6
    assert result.cost_usd_micros == int((usd * 10**6).to_integral_value(rounding=ROUND_CEILING))
    # Beside it, what the catalog says those tokens cost, for the reconciliation of the two.
    catalog = load_catalog().entry(MINI_OPENROUTER).cost_micros(result.input_tokens, result.output_tokens)
    assert result.catalog_cost_usd_micros == catalog


def test_direct_route_is_priced_from_the_catalog(sim: str) -> None:
    result = only(dispatch(sim, [job("Hello", [MINI])])[0])
    assert result.cost_source == "catalog"
    # gpt-4o-mini: $0.15 in, $0.60 out per million tokens, exact, and at most that rounded up to a whole
    # micro-dollar (what the checkpoint charges it, with the rest of its chunk: `amounts.charge_lines`).
    pico = result.input_tokens * 150_000 + result.output_tokens * 600_000
    assert result.cost_usd_pico == pico
    assert result.cost_usd_micros == -(-pico // 10**6) == result.catalog_cost_usd_micros


def test_429s_from_a_low_rpm_provider_are_absorbed_and_every_item_succeeds(slow_sim: str) -> None:
    before = stats(slow_sim)
    results, dispatcher = dispatch(slow_sim, [job(f"Item {i}") for i in range(6)])
    after = stats(slow_sim)
    assert after["rate_limited"] > before["rate_limited"]  # the limit really was hit
    assert [r.status for r in results] == ["succeeded"] * 6
    assert sum(r.rate_limited for r in results) == after["rate_limited"] - before["rate_limited"]
    assert dispatcher.routes[MINI].rpm.per_minute < 120  # learned from x-ratelimit-limit-requests


def test_every_job_gets_exactly_one_final_result(sim: str) -> None:
    outcomes = {
        "": "succeeded",
        "[[sim:500*1]]": "succeeded",
        "[[sim:truncate*1]]": "succeeded",
        "[[sim:400]]": "failed",
        "[[sim:refuse]]": "failed",
        "[[sim:malformed]]": "failed",
    }
    cases = list(outcomes.items()) * 10
    # Half the jobs have a fallback route, so some items move between routes while others finish.
    jobs = [job(f"Item {i} {marker}", [MINI, MINI_OPENROUTER][: 1 + i % 2]) for i, (marker, _) in enumerate(cases)]
    results, _ = dispatch(sim, jobs, dispatch_cfg={"max_attempts": 2})
    assert Counter(r.item_id for r in results) == Counter(j.item_id for j in jobs)
    by_id = {r.item_id: r for r in results}
    assert [by_id[j.item_id].status for j in jobs] == [expected for _, expected in cases]
