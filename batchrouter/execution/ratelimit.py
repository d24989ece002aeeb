"""Client-side rate limiting: token buckets, adaptive slow-down on 429, and a circuit breaker."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """`per_minute` units refilled continuously; a burst of `burst_seconds` worth.

    `acquire` may be awaited by one caller at a time (each route has one admission loop), so the
    bucket never needs a queue of its own. `scale` slows it down (adaptive back-off) without
    forgetting the configured rate.
    """

    def __init__(self, per_minute: float, *, burst_seconds: float = 1.0) -> None:
        self.per_minute = float(per_minute)
        self.burst_seconds = burst_seconds
        self.scale = 1.0
        self.level = self.capacity
        self.stamp = time.monotonic()

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0 * self.scale

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_minute / 60.0 * self.burst_seconds)

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def set_limit(self, per_minute: float) -> None:
        self._refill(time.monotonic())
        self.per_minute = float(per_minute)
        self.level = min(self.level, self.capacity)

    async def acquire(self, amount: float = 1.0) -> None:
        need = min(amount, self.capacity)
        while True:
            now = time.monotonic()
            self._refill(now)
            if self.level >= need:
                self.level -= amount
                return
            await asyncio.sleep((need - self.level) / self.rate)

    def refund(self, amount: float) -> None:
        """Give back units taken on an estimate that turned out too high."""
        self._refill(time.monotonic())
        self.level = min(self.capacity, self.level + amount)

    def drain(self) -> None:
        """Empty the bucket (the provider just said 429: it counts differently than we thought)."""
        self._refill(time.monotonic())
        self.level = min(self.level, 0.0)


class AdaptiveRate:
    """Multiplicative slow-down on 429, gradual recovery on success (AIMD)."""

    def __init__(self, *, floor: float = 0.05, recover_step: float = 0.02) -> None:
        self.scale = 1.0
        self.floor = floor
        self.recover_step = recover_step
        self.paused_until = 0.0

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        now = time.monotonic()
        # Slow down once per pause: the other 429s of a burst answer requests sent before the first one.
        if now >= self.paused_until:
            self.scale = max(self.floor, self.scale * 0.7)
        wait = retry_after_s if retry_after_s is not None else 1.0
        self.paused_until = max(self.paused_until, now + wait)

    def on_success(self) -> None:
        if self.scale < 1.0:
            self.scale = min(1.0, self.scale + self.recover_step)

    async def wait_if_paused(self) -> bool:
        """Sleep out a Retry-After pause; True when there was one to wait for."""
        delay = self.paused_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            return True
        return False


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; lets one probe through after `cooldown_s`."""

    def __init__(self, threshold: int, *, cooldown_s: float = 30.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        self.trips = 0

    @property
    def is_open(self) -> bool:
        if self.opened_at is None:
            return False
        if time.monotonic() - self.opened_at >= self.cooldown_s:
            return False  # half-open: the next attempt is the probe
        return True

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def record_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            if self.opened_at is None or not self.is_open:
                self.trips += 1
            self.opened_at = time.monotonic()
