"""Receipts say which lane answered an item and when, on BatchRouter's clock, whatever the lane.

Found by `benchmarks/lanes.py` (issue 11): a flex answer's receipt says lane "online", so the lane
status counts it as hedged; a provider batch line's `finished_at` is the provider's clock (hours ahead
of the wall in a simulation), so it cannot be compared with the batch's submission or deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest
from charges import assert_charged_by_catalog

from batchrouter.access.actors import CLI
from batchrouter.batches.batch_lane import lane_status
from batchrouter.batches.states import BatchState
from batchrouter.core.config import LanesConfig, Settings, SimulatorConfig
from batchrouter.engine import BatchRouter
from batchrouter.simulator import running_simulator

pytestmark = pytest.mark.integration

USD = 1_000_000
SCALE = 1440.0  # a day of provider time in a wall minute
DEADLINE_S = 120.0  # wall seconds to wait for a batch to end, on a loaded machine


def manifest(model: str, n: int = 6) -> bytes:
    rows = ["item_id,model,prompt,max_tokens"] + [f"i{i},{model},Summarise note {i} in one line.,32" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


@pytest.fixture
def engine(settings: Settings) -> Iterator[tuple[BatchRouter, str]]:
    sim = SimulatorConfig(latency_ms=0, max_output_words=12, seed=3, batch_time_scale=SCALE, batch_validating_s=60,
                          batch_median_s=600, batch_sigma=0.3)  # fmt: skip
    with running_simulator(sim) as url:
        lanes = LanesConfig(time_scale=SCALE, batch_prior_p95_s=4 * 3600)
        config = settings.model_copy(update={"simulator": sim, "lanes": lanes})
        made = BatchRouter(config)
        made.ledger.grant("acme", 5 * USD, key="grant")
        yield made, url


def run_to_the_end(engine: BatchRouter, batch_id: str, url: str) -> pl.DataFrame:
    deadline = time.monotonic() + DEADLINE_S
    while engine.batches.advance(batch_id, actor=CLI, simulator_url=url).state == BatchState.WAITING_ON_PROVIDER:
        assert time.monotonic() < deadline, f"batch {batch_id} still waiting after {DEADLINE_S} s"
        time.sleep(0.2)  # poll interval of the loop, not synchronisation: the deadline above bounds it
    return engine.storage.read_parquet(*engine.batches.info(batch_id).folder("receipts.parquet"))


def test_a_flex_answer_s_receipt_names_the_flex_lane_and_is_not_counted_as_hedged(engine: Any) -> None:
    engine, url = engine
    # Four hours: the batch prior (4 h here) does not fit, flex (each request 3x slower) does.
    view = engine.batches.create(manifest("gpt-5-mini"), filename="m.csv", workspace="acme", actor=CLI, deadline="4h")
    assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"flex"}

    got = run_to_the_end(engine, view.batch_id, url)

    assert set(got["status"]) == {"succeeded"}
    assert_charged_by_catalog(engine.catalog, got, lambda row: "flex")  # billed as flex
    assert set(got["lane"]) == {"flex"}
    (flex,) = lane_status(engine.storage, engine.settings, engine.batches.info(view.batch_id))["lanes"]
    assert flex["lane"] == "flex" and flex["hedged"] == 0


def test_a_provider_batch_line_s_receipt_finishes_on_batch_router_s_clock_not_the_provider_s(engine: Any) -> None:
    engine, url = engine
    view = engine.batches.create(manifest("gpt-4o-mini"), filename="m.csv", workspace="acme", actor=CLI,
                                 deadline="24h")  # fmt: skip

    got = run_to_the_end(engine, view.batch_id, url)
    looked = datetime.now(UTC)

    assert set(got["lane"]) == {"batch"}
    # Like every other receipt: started, then finished, and not after the moment the receipt was read.
    assert (got["finished_at"] >= got["started_at"]).all()
    assert got["finished_at"].max() <= looked, "finished_at is on the provider's (accelerated) clock"


def test_a_flex_request_refused_for_capacity_is_asked_again_then_goes_on_at_the_standard_tier_and_billed_so(
    settings: Settings,
) -> None:
    # Half the items are refused flex capacity once (a 429, not billed): asked again on flex, they are
    # answered there at the batch price. The other half are refused every time: after `flex_retries` more
    # tries they are answered at the standard tier, their receipts say online and charge the online price.
    rows = ["item_id,model,prompt,max_tokens"] + [
        f"i{i},gpt-5-mini,Summarise note {i} in one line. [[sim:flexbusy{'' if i % 2 else '*1'}]],32" for i in range(24)
    ]
    sim = SimulatorConfig(latency_ms=0, max_output_words=12, seed=5)
    with running_simulator(sim) as url:
        dispatch = settings.dispatch.model_copy(update={"backoff_base_s": 0.01, "backoff_max_s": 0.05})
        config = settings.model_copy(update={"simulator": sim, "lanes": LanesConfig(batch_prior_p95_s=4 * 3600),
                                             "dispatch": dispatch})  # fmt: skip
        engine = BatchRouter(config)
        engine.ledger.grant("acme", 5 * USD, key="grant")
        view = engine.batches.create(("\n".join(rows) + "\n").encode(), filename="m.csv", workspace="acme",
                                     actor=CLI, deadline="4h")  # fmt: skip
        assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"flex"}

        got = run_to_the_end(engine, view.batch_id, url)

    assert set(got["status"]) == {"succeeded"} and got.height == 24
    by_lane = {lane: sorted(ids) for lane, ids in got.group_by("lane").agg("item_id").iter_rows()}
    assert by_lane == {"flex": sorted(f"i{i}" for i in range(0, 24, 2)),
                       "online": sorted(f"i{i}" for i in range(1, 24, 2))}  # fmt: skip
    assert_charged_by_catalog(engine.catalog, got, lambda row: "flex" if row["lane"] == "flex" else None)
    (hold,) = engine.ledger.batch_holds(view.batch_id)
    assert hold.captured_usd_micros == got["cost_usd_micros"].sum() <= hold.amount_usd_micros
    # Each refusal counted as one, apart from rate limits (it never slowed the route down).
    health = health_of(engine, view.batch_id)
    retries = engine.settings.dispatch.flex_retries
    assert health["flex_refused"].sum() == 12 * 1 + 12 * (1 + retries) and health["rate_limited"].sum() == 0


def health_of(engine: BatchRouter, batch_id: str) -> pl.DataFrame:
    info = engine.batches.info(batch_id)
    names = [n for n in engine.storage.list(*info.folder("dispatch")) if n.startswith("health-")]
    return pl.concat([engine.storage.read_parquet(*info.folder("dispatch", n)) for n in names], how="diagonal_relaxed")


def test_a_rate_limit_on_flex_is_waited_out_on_flex_not_sent_on_at_the_online_price(settings: Settings) -> None:
    # Half the requests are answered twice with a rate limit's 429 first (`[[sim:429*2]]`), none refused
    # for capacity: the dispatcher waits the limits out and the items stay flex, billed at the batch price.
    sim = SimulatorConfig(latency_ms=0, max_output_words=12, seed=5)
    rows = ["item_id,model,prompt,max_tokens"] + [
        f"i{i},gpt-5-mini,Summarise note {i} in one line.{' [[sim:429*2]]' if i % 2 else ''},32" for i in range(12)
    ]
    with running_simulator(sim) as url:
        config = settings.model_copy(update={"simulator": sim, "lanes": LanesConfig(batch_prior_p95_s=4 * 3600)})
        engine = BatchRouter(config)
        engine.ledger.grant("acme", 5 * USD, key="grant")
        view = engine.batches.create(("\n".join(rows) + "\n").encode(), filename="m.csv", workspace="acme",
                                     actor=CLI, deadline="4h")  # fmt: skip
        assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"flex"}

        got = run_to_the_end(engine, view.batch_id, url)

    assert set(got["status"]) == {"succeeded"} and set(got["lane"]) == {"flex"}
    assert health_of(engine, view.batch_id)["rate_limited"].sum() == 12  # each limit hit, and waited out
    assert_charged_by_catalog(engine.catalog, got, lambda row: "flex")


def test_a_tier_the_request_asks_for_is_its_lane_whatever_the_deadline_would_choose(engine: Any) -> None:
    # A day to spare sends gpt-5-mini to the provider's Batch API, except the items that name a tier:
    # priority stays priority (faster, at the priority price), flex stays flex (at the batch price).
    engine, url = engine
    import json

    def line(custom_id: str, tier: str | None) -> str:
        body: dict[str, Any] = {"model": "gpt-5-mini", "max_completion_tokens": 32,
                                "messages": [{"role": "user", "content": f"Summarise note {custom_id}."}]}  # fmt: skip
        if tier:
            body["service_tier"] = tier
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    tiers = {"p0": "priority", "p1": "priority", "f0": "flex", "b0": None, "b1": None, "b2": None}
    data = ("\n".join(line(c, t) for c, t in tiers.items()) + "\n").encode()
    view = engine.batches.create(data, filename="m.jsonl", workspace="acme", actor=CLI, deadline="24h")
    assert view.quote is not None
    assert {r["lane"]: r["items"] for r in view.quote["by_lane"]} == {"priority": 2, "flex": 1, "batch": 3}

    got = run_to_the_end(engine, view.batch_id, url)

    assert set(got["status"]) == {"succeeded"}
    lanes = dict(zip(got["item_id"], got["lane"], strict=True))
    assert lanes == {c: t or "batch" for c, t in tiers.items()}
    assert_charged_by_catalog(engine.catalog, got, lambda row: row["lane"])
    fast = got.filter(pl.col("lane") == "priority")
    priority = fast["cost_usd_micros"].sum()
    tokens = fast.select("route", "input_tokens", "output_tokens").iter_rows()
    online = sum(engine.catalog.entry(r).cost_micros(i, o) for r, i, o in tokens)
    assert priority > online  # the premium was charged, and reserved
    (hold,) = engine.ledger.batch_holds(view.batch_id)
    assert hold.captured_usd_micros == got["cost_usd_micros"].sum()


@pytest.mark.parametrize("deadline, lane", [(None, "online"), ("24h", "batch")])
def test_a_batch_pays_its_exact_cost_rounded_up_once_per_checkpoint_chunk_not_once_per_line(
    engine: Any, deadline: str | None, lane: str
) -> None:
    engine, url = engine
    view = engine.batches.create(manifest("gpt-4o-mini", n=40), filename="m.csv", workspace="acme", actor=CLI,
                                 deadline=deadline)  # fmt: skip

    got = run_to_the_end(engine, view.batch_id, url)

    assert set(got["status"]) == {"succeeded"} and set(got["lane"]) == {lane}
    assert_charged_by_catalog(engine.catalog, got, lambda row: row["lane"])
    chunks = engine.storage.list(*engine.batches.info(view.batch_id).folder("dispatch", "chunks"))
    exact = int(got["cost_usd_pico"].sum())
    charged = int(got["cost_usd_micros"].sum())
    each_rounded_up = sum(-(-p // USD) for p in got["cost_usd_pico"])
    # At most one micro-dollar above the exact total per chunk, where each line rounded up pays far more.
    assert -(-exact // USD) <= charged <= -(-exact // USD) + len(chunks) < each_rounded_up
    (hold,) = engine.ledger.batch_holds(view.batch_id)
    assert hold.captured_usd_micros == charged
