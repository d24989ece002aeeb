"""Dispatch benchmark: 20,000 items against the simulator in its own process.

Simulator: 200 ms latency, 1,000 requests/s allowed (60,000 RPM). Dispatcher: concurrency 256.
Ceiling = min(rate limit, concurrency / latency) = min(1,000, 1,280) = 1,000 items/s.
Goal: >= 95% of the ceiling, no 429s once the limits are known, <= 0.5 ms of dispatcher CPU per item.

Two dispatcher runs: limits configured exactly, and limits configured too high (the dispatcher must
learn the real ones from the x-ratelimit-* headers; 429s are counted before and after it has).
Baseline in the same process: a minimal raw aiohttp loop (semaphore + the same token bucket).
The same load end to end, through `batchrouter run`: benchmarks/online_lane.py (it reuses this baseline).

    .venv/bin/python benchmarks/dispatch.py [--items N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import urllib.request

import aiohttp

from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import RoutePolicy, SimulatorConfig, load_settings
from batchrouter.execution.checkpoint import ItemResult
from batchrouter.execution.dispatch import Dispatcher, Job
from batchrouter.execution.providers import RequestItem
from batchrouter.execution.ratelimit import TokenBucket
from batchrouter.simulator import running_simulator

LATENCY_MS = 200.0
RPM = 60_000
CONCURRENCY = 256


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def jobs(n: int) -> list[Job]:
    return [
        Job(
            item_id=f"i{i}",
            model="gpt-4o-mini",
            request=RequestItem(f"i{i}", [{"role": "user", "content": f"Classify ticket {i}: refund request"}], 16),
            chain=["openai:gpt-4o-mini"],
            estimate_tokens=40,
            reserve_usd_micros=20,
            input_sha256="",
        )
        for i in range(n)
    ]


def stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base.replace("/v1", "/_stats")) as r:
        return dict(json.loads(r.read()))


def run_dispatcher(base: str, n: int, configured_rpm: int) -> dict[str, float]:
    settings = load_settings(
        providers={
            "openai": {
                "kind": "simulator",
                "wire": "openai",
                "base_url": base,
                "rpm": configured_rpm,
                "tpm": 100_000_000,
                "max_concurrency": CONCURRENCY,
            },
        },
        dispatch={"checkpoint_items": 10**9},
    )
    results: list[ItemResult] = []

    before = stats(base)["rate_limited"]
    dispatcher = Dispatcher(settings=settings, catalog=load_catalog(), policy=RoutePolicy(), on_result=results.append)
    c0, t0 = cpu(), time.monotonic()
    asyncio.run(dispatcher.run(jobs(n)))
    wall, used = time.monotonic() - t0, cpu() - c0
    after = stats(base)["rate_limited"]
    ok = sum(r.status == "succeeded" for r in results)
    health = dispatcher.routes["openai:gpt-4o-mini"].health
    return {
        "wall": wall,
        "ok": ok,
        "cpu_ms_per_item": used / n * 1000,
        "rate_limited": after - before,
        "late_429": health.rate_limited_after_learning(),
    }


async def raw_aiohttp(base: str, n: int) -> dict[str, float]:
    bucket = TokenBucket(RPM * 0.98)
    sem = asyncio.Semaphore(CONCURRENCY)
    ok = 0
    body = [
        json.dumps(
            {
                "model": "gpt-4o-mini",
                "max_completion_tokens": 16,
                "messages": [{"role": "user", "content": f"Classify ticket {i}: refund request"}],
            }
        ).encode()
        for i in range(n)
    ]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:

        async def one(i: int) -> None:
            nonlocal ok
            try:
                async with session.post(
                    f"{base}/chat/completions",
                    data=body[i],
                    headers={"authorization": "Bearer sim-key", "content-type": "application/json"},
                ) as resp:
                    data = await resp.read()
                    ok += resp.status == 200 and bool(json.loads(data))
            finally:
                sem.release()

        tasks = []
        c0, t0 = cpu(), time.monotonic()
        for i in range(n):
            await sem.acquire()
            await bucket.acquire(1)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        wall, used = time.monotonic() - t0, cpu() - c0
    return {"wall": wall, "ok": ok, "cpu_ms_per_item": used / n * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    args = parser.parse_args()
    n = args.items
    ceiling = min(RPM / 60, CONCURRENCY / (LATENCY_MS / 1000))
    sim = SimulatorConfig(latency_ms=LATENCY_MS, latency_shape="fixed", rpm=RPM, max_output_words=12)
    with running_simulator(sim) as base:
        baseline = asyncio.run(raw_aiohttp(base, n))
        exact = run_dispatcher(base, n, RPM)
        learned = run_dispatcher(base, n, RPM * 3)
    print(
        f"{n:,} items, simulator latency {LATENCY_MS:.0f} ms, limit {RPM / 60:,.0f} req/s, "
        f"concurrency {CONCURRENCY}; ceiling {ceiling:,.0f} items/s"
    )
    for name, r in (
        ("raw aiohttp loop (baseline)", baseline),
        ("dispatcher, limits configured", exact),
        ("dispatcher, limits learned from headers", learned),
    ):
        rate = r["ok"] / r["wall"]
        line = (
            f"{name:42s} {rate:7.0f} items/s  {rate / ceiling:6.1%} of ceiling  "
            f"{r['cpu_ms_per_item']:.3f} ms CPU/item  ok {r['ok']:,.0f}"
        )
        if "rate_limited" in r:
            line += f"  429s {r['rate_limited']:.0f} ({r['late_429']:.0f} once limits known)"
        print(line)


if __name__ == "__main__":
    main()
