"""Client-side limits: token buckets, adaptive slow-down on 429, circuit breaker; on a fake clock, never sleeping."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from batchrouter.execution import ratelimit
from batchrouter.execution.ratelimit import AdaptiveRate, CircuitBreaker, TokenBucket


class FakeClock:
    """Stands in for `time.monotonic` and `asyncio.sleep` inside `batchrouter.execution.ratelimit` only."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    # Replace the module's own references, so the event loop keeps the real clock.
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(ratelimit, "asyncio", SimpleNamespace(sleep=fake.sleep))
    return fake


def acquire(bucket: TokenBucket, amount: float = 1.0) -> None:
    asyncio.run(bucket.acquire(amount))


# -- TokenBucket ------------------------------------------------------------------------------------


def test_bucket_starts_with_one_second_of_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(600)  # 10 per second
    for _ in range(10):
        acquire(bucket)
    assert clock.slept == []
    acquire(bucket)
    assert clock.slept == [pytest.approx(0.1)]


def test_bucket_burst_is_never_below_one_unit(clock: FakeClock) -> None:
    bucket = TokenBucket(6)  # 0.1 per second
    assert bucket.capacity == 1.0
    acquire(bucket)
    assert clock.slept == []
    acquire(bucket)
    assert clock.slept == [pytest.approx(10.0)]


def test_bucket_refills_continuously_up_to_its_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    for _ in range(10):
        acquire(bucket)
    clock.advance(0.45)
    for _ in range(4):
        acquire(bucket)
    assert clock.slept == []
    acquire(bucket)
    assert clock.slept == [pytest.approx(0.05)]


def test_bucket_does_not_store_more_than_its_burst_while_idle(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    clock.advance(3600)
    for _ in range(10):
        acquire(bucket)
    assert clock.slept == []
    acquire(bucket)
    assert len(clock.slept) == 1


def test_amount_over_the_burst_is_admitted_when_full_and_repaid_before_the_next(clock: FakeClock) -> None:
    bucket = TokenBucket(60)  # 1 per second, burst 1
    acquire(bucket, 5)
    assert clock.slept == []
    assert bucket.level == pytest.approx(-4.0)
    acquire(bucket, 1)
    assert sum(clock.slept) == pytest.approx(5.0)


def test_scale_slows_the_refill_without_changing_the_configured_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    bucket.scale = 0.5
    for _ in range(10):
        acquire(bucket)
    acquire(bucket)
    assert clock.slept == [pytest.approx(0.2)]
    assert bucket.per_minute == 600


def test_set_limit_lowers_the_burst_and_the_level(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    bucket.set_limit(120)
    assert bucket.capacity == 2.0
    assert bucket.level == 2.0
    acquire(bucket)
    acquire(bucket)
    acquire(bucket)
    assert clock.slept == [pytest.approx(0.5)]


def test_refund_gives_back_units_up_to_the_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    acquire(bucket, 8)
    bucket.refund(5)
    assert bucket.level == pytest.approx(7.0)
    bucket.refund(100)
    assert bucket.level == pytest.approx(10.0)


def test_drain_empties_the_bucket(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    bucket.drain()
    assert bucket.level == 0.0
    acquire(bucket)
    assert clock.slept == [pytest.approx(0.1)]


def test_drain_keeps_a_debt_already_owed(clock: FakeClock) -> None:
    bucket = TokenBucket(600)
    acquire(bucket, 13)
    bucket.drain()
    assert bucket.level == pytest.approx(-3.0)


# -- AdaptiveRate -----------------------------------------------------------------------------------


def test_rate_limit_slows_down_multiplicatively_and_pauses_for_retry_after(clock: FakeClock) -> None:
    rate = AdaptiveRate()
    rate.on_rate_limited(2.5)
    assert rate.scale == pytest.approx(0.7)
    assert rate.paused_until == pytest.approx(clock.now + 2.5)


def test_rate_limit_without_retry_after_pauses_one_second(clock: FakeClock) -> None:
    rate = AdaptiveRate()
    rate.on_rate_limited(None)
    assert rate.paused_until == pytest.approx(clock.now + 1.0)


def test_a_shorter_retry_after_never_shortens_the_pause(clock: FakeClock) -> None:
    rate = AdaptiveRate()
    rate.on_rate_limited(5.0)
    rate.on_rate_limited(0.1)
    assert rate.paused_until == pytest.approx(clock.now + 5.0)


def test_a_burst_of_429s_within_one_pause_slows_down_once(clock: FakeClock) -> None:
    # Requests already in flight when the first 429 came back say nothing new about the limit.
    rate = AdaptiveRate()
    for _ in range(10):
        rate.on_rate_limited(1.0)
    assert rate.scale == pytest.approx(0.7)


def test_429s_after_the_pause_slow_down_again_down_to_the_floor(clock: FakeClock) -> None:
    rate = AdaptiveRate(floor=0.3)
    rate.on_rate_limited(1.0)
    clock.advance(1.5)
    rate.on_rate_limited(1.0)
    assert rate.scale == pytest.approx(0.49)
    for _ in range(5):
        clock.advance(1.5)
        rate.on_rate_limited(1.0)
    assert rate.scale == pytest.approx(0.3)


def test_success_recovers_gradually_up_to_full_speed(clock: FakeClock) -> None:
    rate = AdaptiveRate(recover_step=0.1)
    rate.on_rate_limited(0.0)
    rate.on_success()
    assert rate.scale == pytest.approx(0.8)
    for _ in range(10):
        rate.on_success()
    assert rate.scale == 1.0


def test_wait_if_paused_sleeps_the_rest_of_the_pause(clock: FakeClock) -> None:
    rate = AdaptiveRate()
    rate.on_rate_limited(2.0)
    clock.advance(0.5)
    asyncio.run(rate.wait_if_paused())
    assert clock.slept == [pytest.approx(1.5)]


def test_wait_if_paused_returns_at_once_when_not_paused(clock: FakeClock) -> None:
    rate = AdaptiveRate()
    rate.on_rate_limited(2.0)
    clock.advance(2.0)
    asyncio.run(rate.wait_if_paused())
    asyncio.run(AdaptiveRate().wait_if_paused())
    assert clock.slept == []


# -- CircuitBreaker ---------------------------------------------------------------------------------


def test_breaker_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, cooldown_s=10)
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.is_open
    breaker.record_failure()
    assert breaker.is_open
    assert breaker.trips == 1


def test_a_success_resets_the_failure_count(clock: FakeClock) -> None:
    breaker = CircuitBreaker(3, cooldown_s=10)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert not breaker.is_open


def test_breaker_half_opens_after_the_cooldown(clock: FakeClock) -> None:
    breaker = CircuitBreaker(2, cooldown_s=10)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(9.9)
    assert breaker.is_open
    clock.advance(0.1)
    assert not breaker.is_open


def test_a_failed_probe_reopens_the_breaker_at_once(clock: FakeClock) -> None:
    breaker = CircuitBreaker(5, cooldown_s=10)
    for _ in range(5):
        breaker.record_failure()
    clock.advance(10)
    breaker.record_failure()
    assert breaker.is_open
    assert breaker.trips == 2


def test_a_successful_probe_closes_the_breaker(clock: FakeClock) -> None:
    breaker = CircuitBreaker(2, cooldown_s=10)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(10)
    breaker.record_success()
    breaker.record_failure()
    assert not breaker.is_open
    assert breaker.trips == 1


def test_failures_while_open_do_not_count_as_new_trips(clock: FakeClock) -> None:
    breaker = CircuitBreaker(2, cooldown_s=10)
    for _ in range(6):
        breaker.record_failure()
    assert breaker.trips == 1
