"""The batch lane end to end, over real HTTP against the simulator's batch APIs on an accelerated clock:
a batch with a deadline goes to the providers' Batch APIs at half price, waits without a process, is
collected line by line, and is hedged online when a provider batch is stuck or expires; each item is
charged once, whichever lane answered it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from charges import assert_charged_by_catalog

from batchrouter.access.actors import CLI
from batchrouter.batches import batch_lane
from batchrouter.batches.batch_lane import BatchLane
from batchrouter.batches.results import RunSummary
from batchrouter.batches.states import BatchState
from batchrouter.core.config import LanesConfig, ProviderConfig, Settings, SimulatorConfig
from batchrouter.engine import BatchRouter
from batchrouter.pricing.predictions import Predictions
from batchrouter.simulator import running_simulator

pytestmark = pytest.mark.integration

USD = 1_000_000
SCALE = 1440.0  # a day of provider time in a wall minute
DEADLINE_S = 120.0  # wall seconds to wait for a batch to end, on a loaded machine


def manifest(n: int = 6) -> bytes:
    rows = ["item_id,model,prompt,max_tokens"]
    rows += [f"g{i},gpt-4o-mini,Summarise note {i} in one line.,32" for i in range(n)]
    rows += [f"c{i},claude-haiku-4-5,Translate line {i} to French.,32" for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def simulator(**fields: Any) -> SimulatorConfig:
    base: dict[str, Any] = {"latency_ms": 0, "max_output_words": 12, "seed": 3, "batch_time_scale": SCALE,
                            "batch_validating_s": 60, "batch_median_s": 600, "batch_sigma": 0.3}  # fmt: skip
    return SimulatorConfig(**(base | fields))


@pytest.fixture
def make(settings: Settings) -> Iterator[Any]:
    """An engine whose providers are a simulator with these batch settings, on the same fast clock."""
    stack: list[Any] = []

    def build(sim: SimulatorConfig, **lanes: Any) -> tuple[BatchRouter, str]:
        cm = running_simulator(sim)
        url = cm.__enter__()
        stack.append(cm)
        # The providers are this simulator (as real providers would be): every process reaches their batches.
        providers = {p: ProviderConfig(kind="simulator", wire=p, base_url=url) for p in ("openai", "anthropic")}
        config = settings.model_copy(
            update={"simulator": sim, "lanes": LanesConfig(time_scale=SCALE, **lanes), "providers": providers}
        )
        engine = BatchRouter(config)
        engine.ledger.grant("acme", 5 * USD, key="grant")
        return engine, url

    yield build
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def advance_until_final(engine: BatchRouter, batch_id: str, url: str) -> RunSummary:
    """`batchrouter run` again and again, as a user (or the sensor) would, until the batch ends."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        run = engine.batches.advance(batch_id, actor=CLI, simulator_url=url)
        if run.state != BatchState.WAITING_ON_PROVIDER:
            return run
        assert time.monotonic() < deadline, f"batch {batch_id} still waiting after {DEADLINE_S} s"
        time.sleep(0.2)  # poll interval of the loop, not synchronisation: the deadline above bounds it


def receipts(engine: BatchRouter, batch_id: str) -> pl.DataFrame:
    return engine.storage.read_parquet(*engine.batches.info(batch_id).folder("receipts.parquet"))


def sent(engine: BatchRouter, batch_id: str) -> list[batch_lane.Sent]:
    info = engine.batches.info(batch_id)
    return BatchLane(engine.storage, engine.settings, engine.catalog, info, record=lambda r: None).sent()


def assert_charged_once(engine: BatchRouter, batch_id: str, items: int = 12) -> pl.DataFrame:
    got = receipts(engine, batch_id)
    assert got["item_id"].n_unique() == got.height == items
    assert set(got["status"]) == {"succeeded"}
    (hold,) = engine.ledger.batch_holds(batch_id)
    assert hold.status == "settled"
    assert hold.captured_usd_micros == got["cost_usd_micros"].sum() <= hold.amount_usd_micros
    assert engine.ledger.verify()["ok"]
    return got


def test_a_batch_with_a_day_to_spare_runs_on_both_providers_batch_apis_at_half_price(make: Any) -> None:
    engine, url = make(simulator())
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")
    assert view.quote is not None
    assert {(r["route"].split(":")[0], r["lane"], r["items"]) for r in view.quote["by_lane"]} == {
        ("openai", "batch", 6),
        ("anthropic", "batch", 6),
    }

    first = engine.batches.advance(view.batch_id, actor=CLI, simulator_url=url)

    # The run submitted provider batches and ended: nothing was answered yet, nothing settled.
    assert first.state == BatchState.WAITING_ON_PROVIDER
    assert first.pending == 12 and first.settlement is None
    assert {s.provider for s in sent(engine, view.batch_id)} == {"openai", "anthropic"}
    assert view.batch_id in batch_lane.waiting(engine.storage)
    # Its lines in flight, per route, which the next batch's hedge times leave room for.
    # (Only for a batch due after their hedge time: one due before it would never meet their hedges.)
    in_flight = batch_lane.lines_in_flight(engine.storage, engine.settings, within_s=24 * 3600)
    assert sorted(in_flight.values()) == [6, 6] and {r.split(":")[0] for r in in_flight} == {"openai", "anthropic"}
    assert batch_lane.lines_in_flight(engine.storage, engine.settings, within_s=3600) == {}
    # A marker an older version wrote has no counts: they are read from the batch's records instead.
    marker = engine.storage.read_json(batch_lane.WAITING, f"{view.batch_id}.json")
    assert sorted(lines for _, lines, _ in marker.pop("in_flight")) == [6, 6]
    engine.storage.write_json(marker, batch_lane.WAITING, f"{view.batch_id}.json")
    assert batch_lane.lines_in_flight(engine.storage, engine.settings, within_s=24 * 3600) == in_flight

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id)
    assert set(got["lane"]) == {"batch"}
    assert got["provider_batch_id"].null_count() == 0 and got["custom_id"].null_count() == 0
    # Each line at the batch price: the catalog's cost of its tokens at the batch discount.
    assert_charged_by_catalog(engine.catalog, got, lambda row: "batch")
    for route, tokens_in, tokens_out, cost in got.select("route", "input_tokens", "output_tokens",
                                                         "cost_usd_micros").iter_rows():  # fmt: skip
        assert cost < engine.catalog.entry(route).cost_micros(tokens_in, tokens_out)  # below the online price
    assert view.batch_id not in batch_lane.waiting(engine.storage)
    assert batch_lane.lines_in_flight(engine.storage, engine.settings, within_s=48 * 3600) == {}
    # What the providers took was measured for the next quotes.
    observed = Predictions(engine.settings.database).observations(lane="batch")
    assert {o.provider for o in observed} == {"openai", "anthropic"}
    assert all(o.outcome == "completed" and o.duration_s > 0 for o in observed)


def test_without_a_deadline_nothing_waits_and_every_item_is_online(make: Any) -> None:
    engine, url = make(simulator())
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI)

    run = engine.batches.advance(view.batch_id, actor=CLI, simulator_url=url)

    assert run.state == BatchState.COMPLETED
    assert set(assert_charged_once(engine, view.batch_id)["lane"]) == {"online"}
    assert sent(engine, view.batch_id) == []


def test_a_stuck_provider_batch_is_hedged_online_by_its_deadline(make: Any) -> None:
    # Batches predicted within 10 minutes (the prior), but every one gets stuck in progress.
    engine, url = make(simulator(batch_stuck_rate=1.0), batch_prior_p95_s=600, margin_s=300)
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="2h")
    assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"batch"}

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id)
    # A line the provider answered before it stuck is kept at the batch price when the cancel ends in
    # time to be seen; every other line went to the fastest lane left, flex where the route sells it
    # (the batch price), else online.
    hedge = {r: "flex" if engine.catalog.entry(r).flex and r.startswith("openai:") else "online" for r in got["route"]}
    for route, lane in got.select("route", "lane").iter_rows():
        assert lane in ("batch", hedge[route])
    assert set(got["lane"]) - {"batch"}, "some line must have been hedged"
    for s in sent(engine, view.batch_id):
        assert s.state == "hedged" and s.history[-1] in ("cancelling", "cancelled")
    # Every item was answered before the deadline (2 h on the batch's clock).
    info = engine.batches.info(view.batch_id)
    submitted = pl.Series([info.submitted_at]).str.to_datetime(time_zone="UTC")[0]
    assert ((got["finished_at"].max() - submitted).total_seconds() * SCALE) <= 2 * 3600
    observed = Predictions(engine.settings.database).observations(lane="batch")
    assert observed and all(o.outcome == "hedged" for o in observed)


def test_a_hedge_takes_flex_at_the_batch_price_where_the_route_sells_it(make: Any) -> None:
    # gpt-5-mini sells flex: a stuck provider batch's lines go there, at the batch price, not online.
    engine, url = make(simulator(batch_stuck_rate=1.0), batch_prior_p95_s=600, margin_s=300)
    rows = ["item_id,model,prompt,max_tokens"] + [f"f{i},gpt-5-mini,Summarise note {i}.,32" for i in range(12)]
    data = ("\n".join(rows) + "\n").encode()
    view = engine.batches.create(data, filename="m.csv", workspace="acme", actor=CLI, deadline="6h")
    assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"batch"}

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id)
    # Lines answered before the batch stuck stay on it when its cancel is seen ending; the rest are on flex.
    lanes = dict(got.group_by("lane").len().iter_rows())
    assert set(lanes) <= {"batch", "flex"} and lanes.get("flex", 0) > 0
    assert_charged_by_catalog(engine.catalog, got, lambda row: row["lane"])
    assert all(s.state == "hedged" for s in sent(engine, view.batch_id))
    (lane,) = batch_lane.lane_status(engine.storage, engine.settings, engine.batches.info(view.batch_id))["lanes"]
    assert lane["lane"] == "batch" and lane["hedged"] == lanes["flex"]


def stuck_then_healthy_seed(base: SimulatorConfig, providers: tuple[str, ...], *, ends_by_s: float) -> int:
    """A simulator seed whose first provider batch of each provider sticks and whose second ends by `ends_by_s`
    (the simulator draws each batch's timeline from its seed and the provider's batch counter)."""
    from batchrouter.simulator.provider_batches import draw_timeline

    for seed in range(10_000):
        sim = base.model_copy(update={"seed": seed})
        first = [draw_timeline(sim, f"{p}:1") for p in providers]
        second = [draw_timeline(sim, f"{p}:2") for p in providers]
        if all(t.stuck_in for t in first) and all(
            t.stuck_in is None and t.validate + t.run + t.finalize < ends_by_s for t in second
        ):
            return seed
    raise AssertionError("no seed found")


def test_a_stuck_provider_batch_with_time_to_spare_is_sent_again_in_a_fresh_one_at_the_batch_price(
    make: Any,
) -> None:
    # Ten batches of each provider were measured done in 50 provider minutes, and five stuck until their
    # hedge at 22 hours. The first provider batch of each provider sticks in progress; the second ends in
    # under 42 minutes. With a day to the deadline, waiting for the stuck one until its hedge would send its
    # lines online (or to flex) near the end: a fresh provider batch, at the batch price, is far likelier to
    # be done in time.
    base = simulator(batch_stuck_rate=0.5)
    sim = base.model_copy(update={"seed": stuck_then_healthy_seed(base, ("openai", "anthropic"), ends_by_s=2500)})
    engine, url = make(sim)
    predictions = Predictions(engine.settings.database)
    for provider in ("openai", "anthropic"):
        for n in range(10):
            predictions.record(provider, "batch", 6, 3000.0, "completed", key=f"earlier-{provider}-{n}")
        for n in range(5):
            predictions.record(provider, "batch", 6, 80_000.0, "hedged", key=f"stuck-{provider}-{n}")
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")
    assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"batch"}

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id)
    assert set(got["lane"]) == {"batch"}  # nothing went online nor to flex
    assert_charged_by_catalog(engine.catalog, got, lambda row: "batch")
    records = sent(engine, view.batch_id)
    for provider in ("openai", "anthropic"):
        (stuck,) = [s for s in records if s.provider == provider and s.generation == 0]
        (fresh,) = [s for s in records if s.provider == provider and s.generation == 1]
        assert stuck.resubmit and stuck.state == "hedged" and "cancelling" in stuck.history
        assert fresh.state == "ended" and fresh.history[-1] == "completed" and not fresh.resubmit
        assert fresh.key != stuck.key and fresh.provider_batch_id != stuck.provider_batch_id
        # Each receipt names the batch that answered it, one of the two. The fresh batch holds every line the
        # stuck one had not answered, and also those it answered when its cancel was not yet seen ending
        # at the release (a race of the machine's load; the first answer is kept, charged once).
        mine = got.filter(pl.col("provider") == provider)
        by_batch = dict(mine.group_by("provider_batch_id").len().iter_rows())
        assert set(by_batch) <= {stuck.provider_batch_id, fresh.provider_batch_id}
        assert by_batch.get(fresh.provider_batch_id, 0) > 0
        assert 6 - by_batch.get(stuck.provider_batch_id, 0) <= fresh.lines <= 6
    shown = batch_lane.lane_status(engine.storage, engine.settings, engine.batches.info(view.batch_id))
    states = sorted((b["state"], b["generation"]) for b in shown["provider_batches"])
    assert states == [("ended", 1)] * 2 + [("resubmitted", 0)] * 2
    # The stuck runs were measured as censored (they took at least that long); the providers hold two each.
    observed = {o.key: o.outcome for o in predictions.observations(lane="batch")
                if not o.key.startswith(("earlier", "stuck"))}  # fmt: skip
    assert sorted(observed.values()) == ["completed", "completed", "hedged", "hedged"]
    import httpx

    headers = {"authorization": "Bearer sim-key", "x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
    assert len(httpx.get(f"{url}/batches", headers=headers).json()["data"]) == 2
    assert len(httpx.get(f"{url}/messages/batches", headers=headers).json()["data"]) == 2


def stalls_then_healthy_seed(base: SimulatorConfig, *, lines: int, ends_by_s: float) -> int:
    """A simulator seed whose first OpenAI batch of `lines` answers some of them and then stops in progress
    (or stays validating, where that is the state it sticks in), and whose second ends by `ends_by_s`."""
    from batchrouter.simulator.provider_batches import draw_timeline

    for seed in range(10_000):
        sim = base.model_copy(update={"seed": seed})
        first, second = draw_timeline(sim, "openai:1"), draw_timeline(sim, "openai:2")
        stops = first.stuck_in == "validating" or (
            first.stuck_in == "in_progress" and 0 < first.answered(lines, first.stuck_at) < lines
        )
        if stops and second.stuck_in is None and second.validate + second.run + second.finalize < ends_by_s:
            return seed
    raise AssertionError("no seed found")


def openai_manifest(n: int = 6) -> bytes:
    rows = ["item_id,model,prompt,max_tokens"] + [
        f"g{i},gpt-4o-mini,Summarise note {i} in one line.,32" for i in range(n)
    ]
    return ("\n".join(rows) + "\n").encode()


def assert_stalled_batch_went_again_at_the_batch_price(engine: BatchRouter, batch_id: str) -> None:
    """Every line answered by a provider batch at the batch price, once; the stuck one cancelled no sooner
    than the stall rule allows, after it had answered some lines; the fresh one completed."""
    got = assert_charged_once(engine, batch_id, items=6)
    assert set(got["lane"]) == {"batch"}
    assert_charged_by_catalog(engine.catalog, got, lambda row: "batch")
    records = sent(engine, batch_id)
    (stuck,) = [s for s in records if s.generation == 0]
    (fresh,) = [s for s in records if s.generation == 1]
    assert stuck.resubmit and stuck.state == "hedged" and "cancelling" in stuck.history
    assert fresh.state == "ended" and fresh.history[-1] == "completed"
    info = engine.batches.info(batch_id)
    seen = engine.storage.read_json(*info.folder(batch_lane.FOLDER, batch_lane.PROGRESS, f"{stuck.key}.json"))
    assert 0 < seen["answered"] < 6
    lanes = engine.settings.lanes
    started = pl.Series([info.submitted_at]).str.to_datetime(time_zone="UTC")[0].timestamp()
    sent_at, resent_at = ((s.submitted_at - started) * lanes.time_scale for s in (stuck, fresh))
    # Not moved for three times as long as it took to get there, and an hour at least, before it was let go.
    quiet_needed = max(lanes.stall_factor * (seen["moved_at_s"] - sent_at), lanes.stall_min_s)
    assert resent_at - seen["moved_at_s"] >= quiet_needed
    assert stuck.hedge_at_s is not None and resent_at < stuck.hedge_at_s - 3600  # long before its hedge
    # The providers hold two batches; the first was measured as censored, the second as completed.
    observed = sorted(o.outcome for o in Predictions(engine.settings.database).observations(lane="batch"))
    assert observed == ["completed", "hedged"]


def test_a_provider_batch_whose_count_stops_is_sent_again_at_the_batch_price_with_no_runs_measured(
    make: Any,
) -> None:
    # A new deployment (no provider batch measured yet). The first OpenAI batch answers some lines and then
    # stops in progress; its own pace says it is stuck, and a fresh one (the prior: 2 h) fits before the
    # hedge of a 24 h deadline. Waiting for the hedge would send its lines online near the end.
    base = simulator(batch_stuck_rate=0.5)
    engine, url = make(base.model_copy(update={"seed": stalls_then_healthy_seed(base, lines=6, ends_by_s=2500)}))
    view = engine.batches.create(openai_manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")
    assert view.quote is not None and {r["lane"] for r in view.quote["by_lane"]} == {"batch"}

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    assert_stalled_batch_went_again_at_the_batch_price(engine, view.batch_id)


def test_a_provider_batch_stuck_validating_is_sent_again_at_the_batch_price_with_no_runs_measured(
    make: Any,
) -> None:
    # A new deployment. The first OpenAI batch never leaves validating; an hour after it was sent it is
    # cancelled and its lines go in a fresh one, long before the hedge of a 24 h deadline.
    base = simulator(batch_stuck_rate=0.5, batch_stuck_states=["validating"])
    engine, url = make(base.model_copy(update={"seed": stalls_then_healthy_seed(base, lines=6, ends_by_s=2500)}))
    view = engine.batches.create(openai_manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id, items=6)
    assert set(got["lane"]) == {"batch"}
    assert_charged_by_catalog(engine.catalog, got, lambda row: "batch")
    records = sent(engine, view.batch_id)
    (stuck,) = [s for s in records if s.generation == 0]
    (fresh,) = [s for s in records if s.generation == 1]
    assert stuck.resubmit and stuck.history[0] == "validating" and "in_progress" not in stuck.history
    assert fresh.lines == 6 and fresh.history[-1] == "completed"
    assert set(got["provider_batch_id"]) == {fresh.provider_batch_id}
    info = engine.batches.info(view.batch_id)
    lanes = engine.settings.lanes
    started = pl.Series([info.submitted_at]).str.to_datetime(time_zone="UTC")[0].timestamp()
    sent_at, resent_at = ((s.submitted_at - started) * lanes.time_scale for s in (stuck, fresh))
    assert resent_at - sent_at >= lanes.validating_max_s  # not let go before the hour
    assert stuck.hedge_at_s is not None and resent_at < stuck.hedge_at_s - 3600  # long before its hedge


def test_the_sensor_sees_a_stalled_provider_batch_from_its_own_looks_and_a_run_sends_it_again(make: Any) -> None:
    # Only the sensor's looks see the count rise and stop (no run in between): they record it, and list the
    # batch once it stalled; the run they start sends its unanswered lines in a fresh provider batch.
    base = simulator(batch_stuck_rate=0.5)
    engine, url = make(base.model_copy(update={"seed": stalls_then_healthy_seed(base, lines=6, ends_by_s=2500)}))
    view = engine.batches.create(openai_manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")
    assert engine.batches.advance(view.batch_id, actor=CLI, simulator_url=url).state == BatchState.WAITING_ON_PROVIDER
    info = engine.batches.info(view.batch_id)
    assert batch_lane.waiting(engine.storage) == [view.batch_id]
    lane = BatchLane(engine.storage, engine.settings, engine.catalog, info, record=lambda r: None)
    (stuck,) = lane.sent()

    deadline = time.monotonic() + DEADLINE_S
    while view.batch_id not in engine.batches.waiting_due():
        assert time.monotonic() < deadline, "the sensor never listed the stalled batch"
        time.sleep(0.1)  # the sensor's tick, not synchronisation: the deadline above bounds it
    listed_at = lane.clock_s()

    (unchanged,) = lane.sent()
    assert unchanged == stuck  # the looks wrote nothing of the batch's own records
    seen = engine.storage.read_json(*info.folder(batch_lane.FOLDER, batch_lane.PROGRESS, f"{stuck.key}.json"))
    assert 0 < seen["answered"] < 6 and listed_at - seen["moved_at_s"] >= engine.settings.lanes.stall_min_s
    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    assert_stalled_batch_went_again_at_the_batch_price(engine, view.batch_id)


def test_a_provider_batch_stuck_finalizing_with_every_line_answered_is_cancelled_early_and_nothing_sent_again(
    make: Any,
) -> None:
    # Every line answered, then it never ends: a cancel ends it with every answer, long before its hedge,
    # and no fresh provider batch is made (its lines wait for the cancel, not sent twice).
    engine, url = make(simulator(batch_stuck_rate=1.0, batch_stuck_states=["finalizing"]))
    view = engine.batches.create(openai_manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id, items=6)
    assert set(got["lane"]) == {"batch"}
    (stuck,) = sent(engine, view.batch_id)
    assert stuck.state == "hedged" and not stuck.resubmit and stuck.collected
    assert stuck.history[-3:] == ["finalizing", "cancelling", "cancelled"]
    assert set(got["provider_batch_id"]) == {stuck.provider_batch_id}
    info = engine.batches.info(view.batch_id)
    started = pl.Series([info.submitted_at]).str.to_datetime(time_zone="UTC")[0].timestamp()
    done_s = (got["finished_at"].max().timestamp() - started) * SCALE
    assert stuck.hedge_at_s is not None and done_s < stuck.hedge_at_s - 3600  # not left to its hedge


def test_an_expired_provider_batch_keeps_its_answered_lines_and_sends_the_rest_online(make: Any) -> None:
    # A 30-minute window and lines answered over about an hour: each batch expires half done.
    sim = simulator(batch_window_s=1800, batch_median_s=3600, batch_sigma=0.0, batch_validating_s=0)
    engine, url = make(sim, batch_prior_p95_s=600, margin_s=60)
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id)
    lanes = dict(got.group_by("lane").len().iter_rows())
    assert lanes.get("batch", 0) > 0 and lanes.get("online", 0) > 0  # partial success, the rest re-routed
    assert {s.history[-1] for s in sent(engine, view.batch_id)} == {"expired"}


def test_a_run_killed_while_its_provider_batches_are_in_flight_resumes_polling_and_settles_each_line_once(
    tmp_path: Path,
) -> None:
    import hashlib
    import json
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from batchrouter.cli import main
    from batchrouter.core.batch_info import batch_id_for

    # Provider batches that take about two provider hours (5 wall seconds here): in flight when killed.
    sim = simulator(batch_median_s=7200, batch_sigma=0.0)
    with running_simulator(sim) as url:
        config = tmp_path / "batchrouter.toml"
        providers = "".join(f'[providers.{p}]\nkind = "simulator"\nwire = "{p}"\nbase_url = "{url}"\n\n'
                            for p in ("openai", "anthropic"))  # fmt: skip
        config.write_text(providers + f"[lanes]\ntime_scale = {SCALE}\n")
        env = {**os.environ, "BATCHROUTER_CONFIG": str(config)}
        os.environ["BATCHROUTER_CONFIG"] = str(config)
        try:
            assert main(["credits", "grant", "--workspace", "acme", "--usd", "5"]) == 0
        finally:
            del os.environ["BATCHROUTER_CONFIG"]
        path = tmp_path / "m.csv"
        path.write_bytes(manifest())
        batch_id = batch_id_for("acme", hashlib.sha256(path.read_bytes()).hexdigest())
        folder = Path(os.environ["BATCHROUTER_STORAGE__ROOT"]) / "batches" / batch_id
        command = [sys.executable, "-m", "batchrouter.cli", "run", str(path), "--workspace", "acme", "--json"]

        proc = subprocess.Popen([*command, "--deadline", "24h", "--wait"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + DEADLINE_S

            def in_flight() -> list[dict[str, Any]]:
                records = [json.loads(p.read_text()) for p in (folder / batch_lane.FOLDER).glob("*.json")]
                return [r for r in records if r["state"] == "in_flight"]

            while len(in_flight()) < 2:  # one provider batch per provider
                assert proc.poll() is None, f"the run ended early: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "no provider batches in flight in time"
                time.sleep(0.05)  # polling interval, not synchronisation: the loop waits on the records
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert not (folder / "settlement.json").exists()

        done = subprocess.run([*command, "--wait"], env=env, capture_output=True, timeout=DEADLINE_S * 2)

        assert done.returncode == 0, done.stderr.decode()[-2000:]
        summary = json.loads(done.stdout)
        assert (summary["state"], summary["succeeded"], summary["pending"]) == ("completed", 12, 0)
        got = pl.read_parquet(folder / "receipts.parquet")
        assert got["item_id"].is_unique().all() and set(got["lane"]) == {"batch"}
        chunks = pl.concat([pl.read_parquet(p) for p in (folder / "dispatch" / "chunks").glob("*.parquet")],
                           how="diagonal_relaxed")  # fmt: skip
        assert chunks.height == 12 and chunks["item_id"].is_unique().all()  # each line recorded once
        # The restart polled the batches it had made: the providers hold exactly one batch each.
        headers = {"authorization": "Bearer sim-key", "x-api-key": "sim-key", "anthropic-version": "2023-06-01"}
        openai = httpx.get(f"{url}/batches", headers=headers).json()["data"]
        anthropic = httpx.get(f"{url}/messages/batches", headers=headers).json()["data"]
        assert (len(openai), len(anthropic)) == (1, 1)
        captured = json.loads((folder / "settlement.json").read_text())
        assert captured["captured_usd_micros"] == got["cost_usd_micros"].sum()


def test_lines_over_the_enqueued_token_limit_wait_for_capacity_and_still_go_by_the_batch_api(make: Any) -> None:
    # OpenAI admits about two of these lines' input tokens per model at once: the rest wait their turn.
    engine, url = make(simulator(batch_enqueued_tokens=40))
    data = manifest().decode().splitlines()
    only_openai = ("\n".join(line for line in data if not line.startswith("c")) + "\n").encode()
    view = engine.batches.create(only_openai, filename="m.csv", workspace="acme", actor=CLI, deadline="24h")

    first = engine.batches.advance(view.batch_id, actor=CLI, simulator_url=url)

    assert first.state == BatchState.WAITING_ON_PROVIDER
    assert batch_lane.unsent_of(engine.storage, view.batch_id) > 0  # held back, not sent online
    final = advance_until_final(engine, view.batch_id, url)
    assert final.state == BatchState.COMPLETED
    got = receipts(engine, view.batch_id)
    assert got.height == 6 and set(got["lane"]) == {"batch"} and got["item_id"].is_unique().all()
    assert len(sent(engine, view.batch_id)) > 1  # several provider batches, one after another


def test_cancelling_a_batch_waiting_on_its_providers_cancels_their_batches_and_charges_nothing(make: Any) -> None:
    engine, url = make(simulator(batch_median_s=7200, batch_sigma=0.0))
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="24h")
    assert engine.batches.advance(view.batch_id, actor=CLI, simulator_url=url).state == BatchState.WAITING_ON_PROVIDER

    cancelled = engine.batches.cancel(view.batch_id, actor=CLI)

    assert cancelled.state == BatchState.CANCELLED
    for s in sent(engine, view.batch_id):
        assert s.history[-1] in ("cancelling", "cancelled")
    (hold,) = engine.ledger.batch_holds(view.batch_id)
    assert hold.captured_usd_micros == 0 and hold.status != "held"
    assert view.batch_id not in batch_lane.waiting(engine.storage)


def test_a_hedge_collects_what_the_cancelled_batch_answered_and_sends_only_the_rest_online(make: Any) -> None:
    # Lines answered evenly over five provider hours; a 6 h deadline with a 2 h margin cancels at about 3 h
    # (half the margin before the hedge time), when about half are answered, and hedges at about 4 h.
    sim = simulator(batch_median_s=5 * 3600, batch_sigma=0.0, batch_validating_s=0, batch_cancel_s=30)
    engine, url = make(sim, batch_prior_p95_s=600, margin_s=2 * 3600)
    view = engine.batches.create(manifest(), filename="m.csv", workspace="acme", actor=CLI, deadline="6h")

    final = advance_until_final(engine, view.batch_id, url)

    assert final.state == BatchState.COMPLETED
    got = assert_charged_once(engine, view.batch_id)
    lanes = dict(got.group_by("lane").len().iter_rows())
    assert lanes.get("batch", 0) > 0 and lanes.get("online", 0) > 0  # the answered half at the batch price
    for s in sent(engine, view.batch_id):
        assert s.state == "hedged" and s.history[-1] == "cancelled" and s.collected
    # No line was both answered by its provider batch and sent online: each was recorded once, ever.
    folder = engine.storage.path(*engine.batches.info(view.batch_id).folder("dispatch", "chunks"))
    chunks = pl.concat([pl.read_parquet(p) for p in Path(folder).glob("*.parquet")], how="diagonal_relaxed")
    assert chunks.height == 12 and chunks["item_id"].is_unique().all()
