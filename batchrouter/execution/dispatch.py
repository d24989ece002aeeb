"""Dispatch: send routed items to their providers as fast as each route's limits allow.

Per route: a token bucket for requests per minute and one for tokens per minute (tokens taken on
the quote's estimate, input + output cap, and the unused part given back once usage is known), a
concurrency cap (the provider's `max_concurrency`, shared by all its routes: it is how many
requests the server takes at once, whatever the model), adaptive slow-down on 429 that honours
Retry-After and recovers, jittered exponential back-off for transient errors within a per-item
attempt budget, a per-request timeout, stall detection (no byte for `stall_timeout_s`: cancel and
retry), and a circuit breaker that moves a failing route's items to the next route of their
fallback chain. Limits announced by the provider's headers replace configured ones when they are
lower.

Each item ends in exactly one final state, `succeeded` or `failed` (with the last error's code
and message); the caller records it (see `receipts.Checkpoint`).

The HTTP client is aiohttp itself, one session per base URL, with each route's URL, headers and
timeouts built once: at the rate limit a request's own CPU is the cost that caps throughput, and
httpx (its pool, or its API over an aiohttp transport) spent two to three times a bare aiohttp
request's CPU on header and URL objects; see benchmarks/dispatch.py and benchmarks/online_lane.py.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import numpy as np
import polars as pl
from multidict import CIMultiDict
from yarl import URL

from batchrouter.core import wirejson
from batchrouter.core.amounts import micros_up
from batchrouter.core.catalog import Catalog, CatalogEntry
from batchrouter.core.config import DispatchConfig, ProviderConfig, RoutePolicy, Settings
from batchrouter.core.errors import ProviderError, RateLimitedError, TerminalError, TransientError
from batchrouter.execution.checkpoint import ItemResult, ItemStatus, utc
from batchrouter.execution.providers import ProviderAdapter, RefusedError, RequestItem, adapter_for
from batchrouter.execution.providers.base import CAPACITY_REFUSED
from batchrouter.intake.manifest import request_messages

# Errors that say the route itself is unusable (bad key, unknown model): try the next route.
ROUTE_ERRORS = ("unauthorized", "not_found", "missing_base_url", "missing_api_key")
MAX_RATE_LIMITED = 50  # 429s one item may absorb before it counts as a failed attempt
ENQUEUE_STEP = 256  # jobs made and queued between two chances for the pumps to send
RATE_MARGIN = 0.98  # stay just under a provider's announced limit


@dataclass
class Job:
    """An item on its way: its request, its route chain and what happened so far."""

    item_id: str
    model: str
    request: RequestItem
    chain: list[str]
    estimate_tokens: int
    reserve_usd_micros: int
    # The receipt's hash of the item's messages and parameters as validated; None: worked out from the request
    # the job was made with when first asked (`inputs_sha256`), so making 100,000 jobs does not delay the first send.
    input_sha256: str | None = None
    position: int = 0
    attempts: int = 0
    failures_here: int = 0
    rate_limited: int = 0
    started: float | None = None
    last_error: ProviderError | None = None
    tried: list[str] = field(default_factory=list)
    # A flex request refused for capacity is asked again on flex, after a back-off, `flex_retries` times at
    # most and until this wall-clock time (its lane's hedge time: the standard tier still ends it by the
    # deadline); None: at once at the standard tier.
    flex_until: float | None = None
    flex_refusals: int = 0
    made_with: RequestItem = field(init=False, repr=False, compare=False)  # `request` changes tier on the way

    def __post_init__(self) -> None:
        self.made_with = self.request

    @property
    def route(self) -> str:
        return self.chain[self.position]

    def inputs_sha256(self) -> str:
        if self.input_sha256 is None:
            r = self.made_with
            canonical = json.dumps(
                [r.messages, r.params, r.temperature, *([r.n] if r.n > 1 else [])], sort_keys=True, ensure_ascii=False
            )
            self.input_sha256 = hashlib.sha256(canonical.encode()).hexdigest()
        return self.input_sha256


def _lane_of(job: Job) -> str:
    """The lane a job was answered on: its request's tier (flex, priority) else online. A flex job the
    provider refused goes on at the standard tier without `service_tier`, so it reads online."""
    tier = (job.request.params or {}).get("service_tier")
    return tier if tier in ("flex", "priority") else "online"


def jobs_from_routed(items: pl.DataFrame) -> Iterator[Job]:
    """Jobs for routed items (the `routed_items` table), made one by one as they are taken."""
    wanted = ("item_id", "model", "route", "fallbacks", "input_tokens", "output_cap", "reserve_usd_micros",
              "system", "prompt", "messages", "temperature", "params", "n")  # fmt: skip
    for row in items.select([c for c in wanted if c in items.columns]).iter_rows(named=True):
        messages = request_messages(row["system"], row["prompt"], row["messages"])
        params = json.loads(row["params"]) if row.get("params") else None
        n = int(row.get("n") or 1)
        yield Job(
            item_id=row["item_id"],
            model=row["model"],
            request=RequestItem(row["item_id"], messages, int(row["output_cap"]), row["temperature"], params, n=n),
            chain=[row["route"], *(row["fallbacks"] or [])],
            estimate_tokens=int(row["input_tokens"]) + int(row["output_cap"]) * n,
            reserve_usd_micros=int(row["reserve_usd_micros"]),
        )


@dataclass
class RouteHealth:
    """What one route did during a run; recorded as data (`dispatch/health.parquet`)."""

    route: str
    requests: int = 0
    succeeded: int = 0
    transient_errors: int = 0
    terminal_errors: int = 0
    rate_limited: int = 0
    flex_refused: int = 0  # 429s of flex out of capacity (not rate limits): asked again, or at the standard tier
    timeouts: int = 0
    breaker_trips: int = 0
    moved_to_fallback: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rate_limited_at: list[float] = field(default_factory=list)  # monotonic times of 429s
    limits_learned_at: float | None = None  # when the provider's headers first lowered our limits

    def row(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(0)
        n = max(1, self.requests)
        return {
            "route": self.route,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "transient_errors": self.transient_errors,
            "terminal_errors": self.terminal_errors,
            "rate_limited": self.rate_limited,
            "flex_refused": self.flex_refused,
            "timeouts": self.timeouts,
            "breaker_trips": self.breaker_trips,
            "moved_to_fallback": self.moved_to_fallback,
            "error_rate": (self.transient_errors + self.terminal_errors) / n,
            "rate_limited_rate": self.rate_limited / n,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "rate_limited_after_learning": self.rate_limited_after_learning(),
        }

    def rate_limited_after_learning(self, grace_s: float = 1.0) -> int:
        """429s that came once the announced limits were in force (after requests already in flight)."""
        if self.limits_learned_at is None:
            return len(self.rate_limited_at)
        return sum(1 for t in self.rate_limited_at if t > self.limits_learned_at + grace_s)


class Route:
    """Runtime state of one route: limits, queue, breaker, health."""

    def __init__(
        self,
        name: str,
        entry: CatalogEntry,
        adapter: ProviderAdapter,
        provider: ProviderConfig,
        cfg: DispatchConfig,
        *,
        slots: asyncio.Semaphore | None = None,
    ) -> None:
        from batchrouter.execution.ratelimit import AdaptiveRate, CircuitBreaker, TokenBucket

        self.name = name
        self.entry = entry
        self.adapter = adapter
        # A provider that routes on to upstreams of its own (OpenRouter) is capped at this route's catalog
        # prices, so none of its fallbacks can bill above what was reserved.
        self.max_price = (
            (entry.input_pico_per_token, entry.output_pico_per_token) if entry.provider == "openrouter" else None
        )
        self.provider = provider
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.rpm = TokenBucket(provider.rpm)
        self.tpm = TokenBucket(provider.tpm)
        # Requests in flight: the provider's slots, shared with its other routes (None given: this route's own).
        self.slots = slots or asyncio.Semaphore(provider.max_concurrency)
        self.adaptive = AdaptiveRate()
        self.breaker = CircuitBreaker(cfg.breaker_failures, cooldown_s=cfg.breaker_cooldown_s)
        self.health = RouteHealth(name)
        # No byte for stall_timeout_s (connecting or reading) is a stall; timeout_s bounds the whole answer.
        self.timeout = aiohttp.ClientTimeout(
            total=provider.timeout_s, sock_connect=min(30.0, cfg.stall_timeout_s), sock_read=cfg.stall_timeout_s
        )
        self._url: tuple[str, URL] | None = None
        self._headers: tuple[dict[str, str], CIMultiDict[str]] | None = None

    def url(self, text: str) -> URL:
        """`text` parsed once: an adapter builds the same URL for every item of a route."""
        if self._url is None or self._url[0] != text:
            self._url = (text, URL(text))
        return self._url[1]

    def headers(self, headers: dict[str, str]) -> CIMultiDict[str]:
        """The adapter's headers in aiohttp's form, converted again only when the adapter hands new ones."""
        if self._headers is None or self._headers[0] is not headers:
            self._headers = (headers, CIMultiDict(headers))
        return self._headers[1]

    def learn(self, limits: Any) -> None:
        """Adopt the provider's announced limits when they are below the configured ones."""
        for announced, configured, bucket in (
            (limits.requests_per_minute, self.provider.rpm, self.rpm),
            (limits.tokens_per_minute, self.provider.tpm, self.tpm),
        ):
            if announced:
                target = min(configured, announced * RATE_MARGIN)
                if abs(target - bucket.per_minute) > 0.5:
                    overcounted = announced < bucket.per_minute
                    bucket.set_limit(target)
                    if overcounted:
                        # The burst left in the bucket was counted against a higher limit than the provider's,
                        # whose window already holds what we sent: spending it would run into 429s. Lowered
                        # only by our own margin, the bucket counted no faster than the provider does: kept.
                        bucket.drain()
                    if self.health.limits_learned_at is None:
                        self.health.limits_learned_at = time.monotonic()

    def cost_pico(self, completion_in: int, completion_out: int, *, cached: int = 0, tier: str | None = None) -> int:
        """What the provider bills, by the catalog, exact (`CatalogEntry.cost_pico`)."""
        return self.entry.cost_pico(completion_in, completion_out, cached=cached, tier=tier)


class Dispatcher:
    """Runs jobs to a final state; `on_result` receives each `ItemResult` as it is decided."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        policy: RoutePolicy,
        on_result: Callable[[ItemResult], None],
        simulator_url: str | None = None,
        seed: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.policy = policy
        self.on_result = on_result
        self.simulator_url = simulator_url
        self.cfg = settings.dispatch
        self.routes: dict[str, Route] = {}
        self.slots: dict[str, asyncio.Semaphore] = {}  # per provider: its max_concurrency across its routes
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.rng = random.Random(seed)
        self.cancelled = cancelled
        self.remaining = 0
        self.done = asyncio.Event()
        self.pumps: list[asyncio.Task[None]] = []
        self.inflight: set[asyncio.Task[None]] = set()

    # -- setup -------------------------------------------------------------------------------
    def _route(self, name: str) -> Route:
        found = self.routes.get(name)
        if found is not None:
            return found
        entry = self.catalog.entry(name)
        provider = self.settings.provider(entry.provider)
        adapter = adapter_for(entry.provider, provider, policy=self.policy, simulator_url=self.simulator_url)
        slots = self.slots.get(entry.provider)
        if slots is None:
            slots = self.slots[entry.provider] = asyncio.Semaphore(provider.max_concurrency)
        route = Route(name, entry, adapter, provider, self.cfg, slots=slots)
        self.routes[name] = route
        if adapter.base_url not in self.sessions:
            self.sessions[adapter.base_url] = self._session()
        self.pumps.append(asyncio.create_task(self._pump(route)))
        return route

    def _session(self) -> aiohttp.ClientSession:
        # Every provider's slots may share one base URL (the simulator): room for all of them at once.
        connections = sum(self.settings.provider(name).max_concurrency for name in self.settings.provider_names())
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=60, ssl=_ssl_context())
        return aiohttp.ClientSession(connector=connector)

    # -- running -----------------------------------------------------------------------------
    async def run(self, jobs: Iterable[Job], count: int | None = None) -> None:
        """Run `jobs` (`count` of them, or a list) to a final state each. Jobs are taken as sending goes, so
        the first requests leave while the rest are still being made."""
        if count is None:
            jobs = list(jobs)
            count = len(jobs)
        self.remaining = count
        if not count:
            return
        with quiet_collector():
            await self._run(jobs)

    async def _run(self, jobs: Iterable[Job]) -> None:
        try:
            for taken, job in enumerate(jobs, 1):
                self._enqueue(job)
                if taken % ENQUEUE_STEP == 0:
                    await asyncio.sleep(0)  # the routes' pumps send what is queued while the next jobs are made
            await self.done.wait()
        finally:
            for task in self.pumps:
                task.cancel()
            for task in list(self.inflight):
                task.cancel()
            await asyncio.gather(*self.pumps, *self.inflight, return_exceptions=True)
            for session in self.sessions.values():
                await session.close()

    def _enqueue(self, job: Job, delay: float = 0.0) -> None:
        try:
            route = self._route(job.route)
        except Exception as exc:  # a route the config cannot serve (unknown provider, missing base_url)
            err = exc if isinstance(exc, ProviderError) else TerminalError("route_unavailable", str(exc))
            job.last_error = err
            self._next_route(job)
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, route.queue.put_nowait, job)
        else:
            route.queue.put_nowait(job)

    async def _pump(self, route: Route) -> None:
        """Admission loop of one route: a job leaves the queue only when limits allow it."""
        while True:
            job = await route.queue.get()
            if self.cancelled is not None and self.cancelled():
                cancel = TerminalError("cancelled", "the batch was cancelled before this item was sent")
                self._finish(job, route, ItemStatus.FAILED, cancel, latency=None)
                continue
            if await route.adaptive.wait_if_paused():
                # The buckets refilled during the pause; spending that as a burst would hit the limit
                # again at once, so resume at the steady rate.
                route.rpm.drain()
                route.tpm.drain()
            if route.breaker.is_open:
                if job.position + 1 < len(job.chain):
                    job.last_error = job.last_error or TransientError("circuit_open", f"route {route.name} is failing")
                    route.health.moved_to_fallback += 1
                    self._next_route(job)
                    continue
                assert route.breaker.opened_at is not None
                await asyncio.sleep(max(0.0, route.breaker.opened_at + route.breaker.cooldown_s - time.monotonic()))
            await route.slots.acquire()
            route.rpm.scale = route.adaptive.scale
            await route.rpm.acquire(1)
            await route.tpm.acquire(job.estimate_tokens)
            task = asyncio.create_task(self._attempt(route, job))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def _attempt(self, route: Route, job: Job) -> None:
        start = time.monotonic()
        if job.started is None:
            job.started = time.time()
        job.attempts += 1
        route.health.requests += 1
        try:
            completion = await self._send(route, job)
        except RateLimitedError as err:
            route.tpm.refund(job.estimate_tokens)
            job.rate_limited += 1
            job.last_error = err
            if err.code == CAPACITY_REFUSED and (job.request.params or {}).get("service_tier") == "flex":
                # Flex out of capacity, not a rate limit (the route's pace and its other items are untouched):
                # asked again on flex after a back-off while its hedge time allows, as OpenAI advises, else
                # on at the standard tier (its lane becomes online, billed at the online price).
                route.health.flex_refused += 1
                job.flex_refusals += 1
                delay = self._backoff(job.flex_refusals)
                again = job.flex_refusals <= self.cfg.flex_retries
                if again and job.flex_until is not None and time.time() + delay < job.flex_until:
                    self._enqueue(job, delay)
                    return
                params = {k: v for k, v in (job.request.params or {}).items() if k != "service_tier"}
                job.request = replace(job.request, params=params or None)
                route.queue.put_nowait(job)
                return
            route.health.rate_limited += 1
            route.health.rate_limited_at.append(time.monotonic())
            route.adaptive.on_rate_limited(err.retry_after_s)
            route.rpm.drain()
            if job.rate_limited <= MAX_RATE_LIMITED:
                route.queue.put_nowait(job)
            else:
                self._transient(route, job, err)
        except RefusedError as err:
            route.health.terminal_errors += 1
            route.breaker.record_success()  # the route works; the model declined this item
            pico = route.cost_pico(
                err.input_tokens, err.output_tokens, tier=(job.request.params or {}).get("service_tier")
            )
            cost = micros_up(pico)
            self._finish(
                job,
                route,
                ItemStatus.FAILED,
                err,
                latency=time.monotonic() - start,
                cost=cost,
                cost_pico=pico,
                cost_source="catalog",
                catalog_cost=cost,
                tokens=(err.input_tokens, err.output_tokens),
                request_id=err.request_id,
            )
        except TerminalError as err:
            route.health.terminal_errors += 1
            job.last_error = err
            if err.code in ROUTE_ERRORS:
                route.breaker.record_failure()
                self._next_route(job)
            else:
                self._finish(job, route, ItemStatus.FAILED, err, latency=time.monotonic() - start)
        except TransientError as err:
            route.health.transient_errors += 1
            if err.code in ("stalled", "timeout"):
                route.health.timeouts += 1
            route.tpm.refund(job.estimate_tokens)
            self._transient(route, job, err)
        except Exception as exc:  # an adapter bug or an answer nobody foresaw: end the item, never hang the run
            route.health.terminal_errors += 1
            job.last_error = TerminalError("internal_error", f"{type(exc).__name__}: {exc}")
            self._finish(job, route, ItemStatus.FAILED, job.last_error, latency=time.monotonic() - start)
        else:
            latency = time.monotonic() - start
            route.health.succeeded += 1
            route.health.latencies_ms.append(latency * 1000)
            route.breaker.record_success()
            route.adaptive.on_success()
            route.tpm.refund(max(0, job.estimate_tokens - completion.input_tokens - completion.output_tokens))
            tier = completion.service_tier or (job.request.params or {}).get("service_tier")
            pico = route.cost_pico(
                completion.input_tokens, completion.output_tokens, cached=completion.cached_tokens, tier=tier
            )
            catalog = micros_up(pico)
            reported = completion.reported_cost_usd_micros
            self._finish(
                job,
                route,
                ItemStatus.SUCCEEDED,
                None,
                latency=latency,
                cost=catalog if reported is None else reported,
                cost_pico=pico if reported is None else None,
                cost_source="catalog" if reported is None else "provider",
                catalog_cost=catalog,
                tokens=(completion.input_tokens, completion.output_tokens),
                completion=completion,
            )
        finally:
            route.slots.release()

    async def _send(self, route: Route, job: Job) -> Any:
        request = job.request if route.max_price is None else replace(job.request, max_price=route.max_price)
        prepared = route.adapter.build(request, route.entry.upstream)
        session = self.sessions[route.adapter.base_url]
        try:
            async with session.post(
                route.url(prepared.url),
                data=prepared.body,
                headers=route.headers(prepared.headers),
                timeout=route.timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                status, headers = response.status, response.headers
        except aiohttp.ServerTimeoutError as exc:  # sock_connect / sock_read: nothing came for stall_timeout_s
            raise TransientError(
                "stalled", f"no data from {route.adapter.base_url} for {self.cfg.stall_timeout_s:g} s ({exc})"
            ) from exc
        except TimeoutError as exc:  # the total: bytes kept coming, but not the whole answer in time
            raise TransientError("timeout", f"no complete answer within {route.provider.timeout_s:g} s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise TransientError("truncated_body", f"the connection closed mid-answer ({exc})") from exc
        except aiohttp.ClientError as exc:  # refused, reset, disconnected before an answer
            raise TransientError("connection_error", f"{type(exc).__name__}: {exc}") from exc
        route.learn(route.adapter.rate_limits(headers))
        return route.adapter.parse(status, headers, body)

    def _transient(self, route: Route, job: Job, err: ProviderError) -> None:
        job.last_error = err
        job.failures_here += 1
        route.breaker.record_failure()
        if route.breaker.is_open:
            route.health.breaker_trips = route.breaker.trips
        if job.failures_here < self.cfg.max_attempts:
            self._enqueue(job, self._backoff(job.failures_here))
        else:
            self._next_route(job)

    def _backoff(self, tries: int) -> float:
        """Seconds to wait before asking again after `tries` failed tries: jittered, doubling to a cap."""
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (tries - 1))
        return float(delay * self.rng.uniform(0.5, 1.5))

    def _next_route(self, job: Job) -> None:
        job.tried.append(job.route)
        if job.position + 1 < len(job.chain):
            job.position += 1
            job.failures_here = 0
            self._enqueue(job)
            return
        route = self.routes.get(job.route)
        self._finish(job, route, ItemStatus.FAILED, job.last_error, latency=None)

    def _finish(
        self,
        job: Job,
        route: Route | None,
        status: ItemStatus,
        err: ProviderError | None,
        *,
        latency: float | None,
        cost: int = 0,
        cost_pico: int | None = None,
        cost_source: str = "none",
        catalog_cost: int | None = None,
        tokens: tuple[int, int] = (0, 0),
        completion: Any = None,
        request_id: str | None = None,
    ) -> None:
        text = completion.text if completion is not None else None
        message = None
        if err is not None:
            routes = ", ".join(dict.fromkeys([*job.tried, job.route]))
            message = f"{err.message} (after {job.attempts} attempt(s) on {routes})"
        entry = route.entry if route is not None else None
        result = ItemResult(
            lane=_lane_of(job),
            item_id=job.item_id,
            status=status,
            route=job.route,
            provider=entry.provider if entry else None,
            model=job.model,
            upstream=entry.upstream if entry else None,
            attempts=job.attempts,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            cached_tokens=completion.cached_tokens if completion is not None else 0,
            reserve_usd_micros=job.reserve_usd_micros,
            cost_usd_micros=cost,
            cost_usd_pico=cost_pico,
            cost_source=cost_source if cost else "none",
            catalog_cost_usd_micros=catalog_cost,
            latency_ms=round(latency * 1000) if latency is not None else None,
            started_at=utc(job.started) if job.started is not None else None,
            finished_at=utc(time.time()),
            provider_request_id=(completion.request_id if completion is not None else request_id),
            input_sha256=job.inputs_sha256(),
            output_sha256=hashlib.sha256(text.encode()).hexdigest() if text is not None else None,
            output_text=text,
            choices=wirejson.dumps_text(completion.choices) if completion and completion.choices else None,
            finish_reason=completion.finish_reason if completion is not None else None,
            error_code=err.code if err is not None else None,
            error_message=message,
            fallbacks_used=job.position,
            rate_limited=job.rate_limited,
        )
        self.on_result(result)
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


# While requests run, a young-generation collection every 700 allocations found no garbage at all and
# cost about as much CPU per request as the dispatcher's own code (benchmarks/online_lane.py); every
# GC_YOUNG_THRESHOLD allocations it is a few collections per batch. Cycles are still collected.
GC_YOUNG_THRESHOLD = 20_000
_collector_lock = threading.Lock()
_collector_users = [0, 0, 0, 0]  # runs inside, and the thresholds to restore when the last one leaves


@contextmanager
def quiet_collector() -> Iterator[None]:
    """Collect less often while a dispatch runs; what was alive before it is frozen (not rescanned).

    Process-wide, so runs in several threads share it: the first in sets it, the last out restores it.
    """
    with _collector_lock:
        if _collector_users[0] == 0:
            _collector_users[1:] = gc.get_threshold()
            gc.freeze()
            young, *older = _collector_users[1:]
            gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)
        _collector_users[0] += 1
    try:
        yield
    finally:
        with _collector_lock:
            _collector_users[0] -= 1
            if _collector_users[0] == 0:
                gc.set_threshold(*_collector_users[1:])
                gc.unfreeze()


_SSL: list[ssl.SSLContext] = []


def _ssl_context() -> ssl.SSLContext:
    """The trust store httpx would use (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), built once per process."""
    if not _SSL:
        import httpx

        _SSL.append(httpx.create_ssl_context())
    return _SSL[0]
