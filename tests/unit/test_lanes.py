"""Lanes: what each route offers, the cheapest lane that meets a deadline with room to hedge, and the
quote's prices by lane (the reserve never depends on the lane)."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from batchrouter.core.catalog import Catalog, CatalogEntry
from batchrouter.core.config import LimitsConfig, ProviderConfig, RoutePolicy, Settings, load_settings
from batchrouter.intake.manifest import read_manifest
from batchrouter.pricing.lanes import (
    Lane,
    Timing,
    choose_lanes,
    chooser,
    hedge_lane,
    lane_price,
    lanes_of,
    price_factor,
    requested_lane,
    wire_of,
)
from batchrouter.pricing.quote import build_quote

HOUR = 3600.0


def timing(
    batch_s: float = 2 * HOUR, online_per_item_s: float = 0.01, margin_s: float = 600.0, done: float | None = None
) -> Timing:
    """Batches predicted at `batch_s`; `done`: the share of batches measured done by any hedge time."""
    return Timing(
        predict=lambda provider, lane, lines: batch_s,
        online_s=lambda entry, items, tokens: items * online_per_item_s,
        margin_s=margin_s,
        flex_s=lambda entry, items, tokens: 3 * items * online_per_item_s,
        done_share=None if done is None else lambda provider, lane, lines, by_s: done,
        min_expected_saving=0.2,
    )


def manifest(rows: dict[str, str], n: int = 3) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "item_id": [f"{model}-{i}" for model in rows for i in range(n)],
            "model": [model for model in rows for _ in range(n)],
            "prompt": [f"{prompt} {i}" for prompt in rows.values() for i in range(n)],
            "max_tokens": [64] * (n * len(rows)),
        }
    )
    return frame


def quote(
    catalog: Catalog, settings: Settings, rows: dict[str, str], *, deadline_s: float | None, t: Timing
) -> pl.DataFrame:
    buf = io.BytesIO()
    manifest(rows).write_csv(buf)
    parsed = read_manifest("m.csv", buf.getvalue(), catalog=catalog, limits=LimitsConfig())

    def lanes(accepted: pl.DataFrame) -> pl.DataFrame:
        return choose_lanes(accepted, deadline_s=deadline_s, catalog=catalog, settings=settings, timing=t)

    q = build_quote(parsed, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1, lanes=lanes,
                    deadline_s=deadline_s)  # fmt: skip
    return q.items


def entry(catalog: Catalog, route: str) -> CatalogEntry:
    return catalog.entry(route)


def test_each_route_offers_the_lanes_its_provider_sells(catalog: Catalog, settings: Settings) -> None:
    offers = {
        route: lanes_of(entry(catalog, route), settings.provider(entry(catalog, route).provider))
        for route in ("openai:gpt-5-mini", "openai:gpt-4o-mini", "anthropic:claude-haiku-4-5-20251001",
                      "openrouter:openai/gpt-4o-mini", "selfhosted:meta-llama/Llama-3.1-8B-Instruct")
    }  # fmt: skip
    assert offers == {
        "openai:gpt-5-mini": [Lane.ONLINE, Lane.FLEX, Lane.BATCH],  # flex is sold for gpt-5 models
        "openai:gpt-4o-mini": [Lane.ONLINE, Lane.BATCH],
        "anthropic:claude-haiku-4-5-20251001": [Lane.ONLINE, Lane.BATCH],
        "openrouter:openai/gpt-4o-mini": [Lane.ONLINE],  # no batch API, no discount
        "selfhosted:meta-llama/Llama-3.1-8B-Instruct": [Lane.ONLINE],
    }


def test_the_wire_is_the_kinds_or_for_the_simulator_the_configured_one() -> None:
    assert wire_of("x", ProviderConfig(kind="anthropic")) == "anthropic"
    assert wire_of("x", ProviderConfig(kind="openai_compatible", base_url="http://h/v1")) == "openai"
    assert wire_of("anthropic", ProviderConfig(kind="simulator")) == "anthropic"
    assert wire_of("anthropic", ProviderConfig(kind="simulator", wire="openai")) == "openai"
    assert wire_of("other", ProviderConfig(kind="simulator")) == "openai"


def test_a_lane_price_is_the_online_price_scaled_and_rounded_up(catalog: Catalog) -> None:
    half = price_factor(entry(catalog, "openai:gpt-4o-mini"), Lane.BATCH)
    assert half == pytest.approx(0.5)
    assert [lane_price(p, half) for p in (0, 1, 2, 3, 1001)] == [0, 1, 1, 2, 501]
    assert price_factor(entry(catalog, "openai:gpt-4o-mini"), Lane.ONLINE) == 1


def test_without_a_deadline_every_item_is_online_at_the_online_price(catalog: Catalog, settings: Settings) -> None:
    items = quote(catalog, settings, {"gpt-4o-mini": "Hello"}, deadline_s=None, t=timing())
    assert set(items["lane"]) == {"online"}
    assert items["lane_expected_usd_micros"].to_list() == items["expected_usd_micros"].to_list()
    assert items["hedge_at_s"].is_null().all()


def test_a_day_to_spare_sends_items_to_the_batch_api_at_half_price_and_says_when_to_hedge(
    catalog: Catalog, settings: Settings
) -> None:
    items = quote(catalog, settings, {"gpt-4o-mini": "Hello", "claude-haiku-4-5": "Bonjour"}, deadline_s=24 * HOUR,
                  t=timing(margin_s=600))  # fmt: skip
    assert set(items["lane"]) == {"batch"}
    for online, lane in items.select("expected_usd_micros", "lane_expected_usd_micros").iter_rows():
        assert lane == -(-online // 2)
    # Each route's items must be answered by the deadline less the margin less the time to send them online.
    assert set(items["hedge_at_s"]) == {24 * HOUR - 600 - 3 * 0.01}


def test_a_route_that_sells_flex_hedges_early_enough_to_go_through_flex_then_online(
    catalog: Catalog, settings: Settings
) -> None:
    items = quote(catalog, settings, {"gpt-5-mini": "Hello"}, deadline_s=24 * HOUR, t=timing(margin_s=600))
    assert set(items["lane"]) == {"batch"}
    # Room for the flex run (3 x 0.01 s an item here) and then online, before the deadline less the margin.
    assert set(items["hedge_at_s"]) == {24 * HOUR - 600 - 3 * 0.01 - 3 * 3 * 0.01}


def test_a_deadline_the_batch_api_may_miss_takes_flex_where_sold_else_online(
    catalog: Catalog, settings: Settings
) -> None:
    # Batches predicted at 2 h; a 1 h deadline leaves no room for them.
    items = quote(catalog, settings, {"gpt-5-mini": "Hello", "gpt-4o-mini": "Hi"}, deadline_s=HOUR, t=timing())
    lanes = dict(zip(items["model"], items["lane"], strict=False))
    assert lanes == {"gpt-5-mini": "flex", "gpt-4o-mini": "online"}


@pytest.mark.parametrize(("done", "lane"), [(0.7, "batch"), (0.4, "batch"), (0.39, "online"), (0.0, "online")])
def test_a_batch_late_at_the_percentile_is_tried_where_the_expected_saving_pays_for_the_hedge(
    catalog: Catalog, settings: Settings, done: float, lane: str
) -> None:
    # Batches at 2 h at the percentile, a 30 minute deadline: gpt-4o-mini sells no flex, so a batch it
    # tries ends either answered at half price (the share done by the hedge time) or hedged online. At
    # least 0.2 of the online price saved in expectation (a share of 0.4 at half price) takes the bet.
    items = quote(catalog, settings, {"gpt-4o-mini": "Hi"}, deadline_s=1800, t=timing(done=done))
    assert set(items["lane"]) == {lane}
    if lane == "batch":  # the hedge still leaves room to answer every item online before the deadline
        assert set(items["hedge_at_s"]) == {1800 - 600 - 3 * 0.01}


def test_where_flex_is_sold_a_late_batch_is_no_bet_flex_costs_the_same(catalog: Catalog, settings: Settings) -> None:
    items = quote(catalog, settings, {"gpt-5-mini": "Hello"}, deadline_s=HOUR, t=timing(done=0.99))
    assert set(items["lane"]) == {"flex"}


def test_a_deadline_too_short_even_to_hedge_stays_online(catalog: Catalog, settings: Settings) -> None:
    # 3 items take 300 s online each at this pace: a 20-minute deadline leaves no time for flex (3x) plus margin.
    items = quote(catalog, settings, {"gpt-5-mini": "Hello"}, deadline_s=1200, t=timing(online_per_item_s=100))
    assert set(items["lane"]) == {"online"}


def test_the_reserve_is_the_same_on_any_lane_and_the_quote_shows_the_saving(
    catalog: Catalog, settings: Settings
) -> None:
    rows = {"gpt-4o-mini": "Hello there", "claude-haiku-4-5": "Bonjour"}
    buf = io.BytesIO()
    manifest(rows).write_csv(buf)
    parsed = read_manifest("m.csv", buf.getvalue(), catalog=catalog, limits=LimitsConfig())
    online = build_quote(parsed, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)
    lanes = build_quote(
        parsed, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1, deadline_s=24 * HOUR,
        lanes=lambda a: choose_lanes(a, deadline_s=24 * HOUR, catalog=catalog, settings=settings, timing=timing()),
    )  # fmt: skip
    assert lanes.items["reserve_usd_micros"].to_list() == online.items["reserve_usd_micros"].to_list()
    summary = lanes.summary()
    assert summary["online_expected_usd_micros"] == online.summary()["expected_usd_micros"]
    assert summary["expected_usd_micros"] == sum(r["expected_usd_micros"] for r in summary["by_lane"])
    assert summary["expected_usd_micros"] < summary["online_expected_usd_micros"]
    assert {(r["route"], r["lane"], r["items"]) for r in summary["by_lane"]} == {
        ("openai:gpt-4o-mini", "batch", 3),
        ("anthropic:claude-haiku-4-5-20251001", "batch", 3),
    }
    assert all(r["saving_usd_micros"] == r["online_expected_usd_micros"] - r["expected_usd_micros"] > 0
               for r in summary["by_lane"])  # fmt: skip
    # The deadline is one of the quote's terms; a quote without one keeps its old id.
    assert lanes.quote_id != online.quote_id
    assert online.summary()["deadline_s"] is None and summary["deadline_s"] == 24 * HOUR


def test_flex_runs_at_the_routes_rate_limit_with_slower_requests(catalog: Catalog, tmp_path: Path) -> None:
    """Flex shares the online lane's rate limits; only each request is slower (`flex_slowdown` times)."""
    providers = {"openai": {"kind": "simulator", "rpm": 1}}
    settings = load_settings(database=str(tmp_path / "br.duckdb"), providers=providers)
    rows = {"gpt-5-mini": "Hello"}  # 3 items at 1 request a minute: 180 s, plus the model's latency
    latency_s = catalog.entry("openai:gpt-5-mini").typical_latency_ms / 1000
    online_s = 180 + latency_s
    flex_s = 180 + latency_s * settings.lanes.flex_slowdown
    margin_s = settings.lanes.margin_s
    buf = io.BytesIO()
    manifest(rows).write_csv(buf)
    parsed = read_manifest("m.csv", buf.getvalue(), catalog=catalog, limits=LimitsConfig())

    def lanes_for(deadline_s: float) -> set[str]:
        q = build_quote(parsed, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1, deadline_s=deadline_s,
                        lanes=chooser(settings, catalog, deadline_s))  # fmt: skip
        return set(q.items["lane"])

    # Room to hedge: the deadline less the margin less the online time must hold the flex run.
    assert lanes_for(margin_s + online_s + flex_s + 1) == {"flex"}
    assert lanes_for(margin_s + online_s + flex_s - 1) == {"online"}


def test_an_openai_compatible_server_is_online_only_even_for_a_model_with_a_batch_discount(catalog: Catalog) -> None:
    # A self-hosted server (vLLM and the like) has no Batch API and no flex tier, whatever the model.
    config = ProviderConfig(kind="openai_compatible", base_url="http://h/v1")
    assert lanes_of(entry(catalog, "openai:gpt-5-mini"), config) == [Lane.ONLINE]


def test_an_item_that_names_a_tier_keeps_it_and_the_others_are_chosen_without_it(catalog: Catalog) -> None:
    # Three gpt-5-mini items under a day: the one asking priority and the one asking flex keep their
    # tiers (no hedge time: they are not waiting on a provider); the third is the choice's, a batch,
    # whose hedge time counts only the items actually on that lane.
    entry = catalog.entry("openai:gpt-5-mini")
    accepted = pl.DataFrame({"row": [0, 1, 2], "route": [entry.route] * 3, "expected_usd_micros": [300, 101, 101],
                             "features": [["service_tier_priority"], ["service_tier_flex", "tools"], []]})  # fmt: skip
    settings = Settings()
    got = choose_lanes(accepted, deadline_s=24 * HOUR, catalog=catalog, settings=settings, timing=timing())
    assert got["lane"].to_list() == ["priority", "flex", "batch"]
    assert got["lane_expected_usd_micros"].to_list() == [300, 51, 51]  # priority: already its price
    assert got["hedge_at_s"].to_list() == [None, None, 24 * HOUR - 600 - 0.01 - 3 * 0.01]
    assert requested_lane(None) is None and requested_lane(["tools"]) is None
    assert price_factor(entry, Lane.PRIORITY) == 1


def test_the_token_rate_counts_the_items_left_to_the_choice_at_their_expected_output(catalog: Catalog) -> None:
    # Three gpt-5-mini items; the first asks priority and is not the choice's. The other two spend the
    # route's token rate on their input and, for each choice, the output expected of the route within
    # their cap (the dispatcher gives back the unused cap).
    entry = catalog.entry("openai:gpt-5-mini")
    expected = entry.expected_output_tokens
    accepted = pl.DataFrame({"row": [0, 1, 2], "route": [entry.route] * 3, "expected_usd_micros": [300, 101, 101],
                             "features": [["service_tier_priority"], [], []], "input_tokens": [10_000, 70, 50],
                             "output_cap": [4096, expected + 500, expected // 2], "n": [1, 2, None]})  # fmt: skip
    asked: list[tuple[int, int]] = []

    def online_s(entry: CatalogEntry, items: int, tokens: int) -> float:
        asked.append((items, tokens))
        return 0.0

    t = Timing(predict=lambda provider, lane, lines: HOUR, online_s=online_s, margin_s=600)
    choose_lanes(accepted, deadline_s=24 * HOUR, catalog=catalog, settings=Settings(), timing=t)
    assert asked == [(2, 70 + 2 * expected + 50 + expected // 2)]


def test_a_hedge_goes_to_flex_only_when_the_token_rate_lets_flex_end_in_time(catalog: Catalog, tmp_path: Path) -> None:
    entry = catalog.entry("openai:gpt-5-mini")
    config = {"kind": "simulator", "rpm": 60_000, "tpm": 60_000, "max_concurrency": 10_000}  # 1,000 tokens a second
    settings = load_settings(database=str(tmp_path / "a.duckdb"), providers={"openai": config})
    # 10 items by the request rate: well under a minute either way; 600,000 tokens take 600 s.
    assert hedge_lane(settings, entry, 10, tokens=1_000, time_left_s=300) == Lane.FLEX
    assert hedge_lane(settings, entry, 10, tokens=600_000, time_left_s=300) == Lane.ONLINE
    assert hedge_lane(settings, entry, 10, tokens=600_000, time_left_s=700) == Lane.FLEX


def test_lines_other_batches_have_in_flight_on_a_route_move_its_hedge_earlier(catalog: Catalog, tmp_path: Path) -> None:
    """Hedges of batches due together share the route's rate: a new batch leaves room for theirs."""
    providers = {"openai": {"kind": "simulator", "rpm": 60}}  # a request a second
    settings = load_settings(database=str(tmp_path / "br.duckdb"), providers=providers)
    buf = io.BytesIO()
    manifest({"gpt-4o-mini": "Hello"}).write_csv(buf)  # 3 items
    parsed = read_manifest("m.csv", buf.getvalue(), catalog=catalog, limits=LimitsConfig())

    def hedge_at(in_flight: dict[str, int]) -> float:
        q = build_quote(parsed, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1, deadline_s=24 * HOUR,
                        lanes=chooser(settings, catalog, 24 * HOUR, in_flight=in_flight))  # fmt: skip
        assert set(q.items["lane"]) == {"batch"}
        (at,) = set(q.items["hedge_at_s"])
        return float(at)

    alone = hedge_at({})
    # 3,600 lines of other batches in flight on this route: an hour more at a request a second.
    assert alone - hedge_at({"openai:gpt-4o-mini": 3600}) == pytest.approx(3600)
    assert hedge_at({"anthropic:claude-haiku-4-5": 3600}) == alone  # another route's lines take none of its rate


def test_a_routes_time_counts_its_providers_concurrency_where_that_binds(catalog: Catalog, tmp_path: Path) -> None:
    from batchrouter.pricing.lanes import route_s

    entry = catalog.entry("openai:gpt-5-mini")
    latency_s = entry.typical_latency_ms / 1000
    one = load_settings(database=str(tmp_path / "a.duckdb"), providers={"openai": {"kind": "simulator",
                        "rpm": 60_000, "max_concurrency": 1}})  # fmt: skip
    # One request in flight: 10 items take 10 latencies online, 10 x 3 latencies on flex (3x slower each).
    assert route_s(one, entry, 10) == pytest.approx(11 * latency_s)
    assert route_s(one, entry, 10, lane=Lane.FLEX) == pytest.approx(11 * 3 * latency_s)


def test_a_routes_time_counts_its_token_rate_where_that_binds(catalog: Catalog, tmp_path: Path) -> None:
    from batchrouter.pricing.lanes import route_s

    entry = catalog.entry("openai:gpt-4o-mini")
    latency_s = entry.typical_latency_ms / 1000
    config = {"kind": "simulator", "rpm": 60_000, "tpm": 600_000, "max_concurrency": 10_000}
    settings = load_settings(database=str(tmp_path / "a.duckdb"), providers={"openai": config})
    # 100 items a second by the rate; 6 M tokens at 10,000 a second take 600 s: the tokens bind.
    assert route_s(settings, entry, 1000, tokens=6_000_000) == pytest.approx(600 + latency_s)
    assert route_s(settings, entry, 1000, tokens=1000) == pytest.approx(1000 / 1000 + latency_s)  # the rate binds


def test_long_prompts_bound_by_the_token_rate_leave_less_time_before_the_hedge(
    catalog: Catalog, tmp_path: Path
) -> None:
    from batchrouter.pricing.lanes import chooser

    def hedge_at(input_tokens: int) -> float:
        config = {"kind": "simulator", "rpm": 60_000, "tpm": 60_000}
        settings = load_settings(database=str(tmp_path / "a.duckdb"), providers={"openai": config})
        choose = chooser(settings, catalog, 24 * HOUR)
        items = pl.DataFrame({"row": [0, 1], "route": ["openai:gpt-4o-mini"] * 2, "expected_usd_micros": [10, 10],
                              "input_tokens": [input_tokens] * 2, "output_cap": [1000, 1000]})  # fmt: skip
        return float(choose(items)["hedge_at_s"][0])

    # Two items of 1,000 output tokens each plus their input, at 1,000 tokens a second: 50,001 input
    # tokens each take 100 s more than 1 does, and the hedge comes that much sooner.
    assert hedge_at(1) - hedge_at(50_001) == pytest.approx(100.0, abs=0.01)


def test_a_bet_reads_the_share_done_when_the_batch_would_be_asked_to_cancel(
    catalog: Catalog, settings: Settings
) -> None:
    asked: list[float] = []

    def share(provider: str, lane: Lane, lines: int, by_s: float) -> float:
        asked.append(by_s)
        return 1.0

    t = Timing(predict=lambda provider, lane, lines: 2 * HOUR, online_s=lambda entry, items, tokens: 0.0, margin_s=600,
               done_share=share, min_expected_saving=0.2, cancel_wait_s=300)  # fmt: skip
    items = quote(catalog, settings, {"gpt-4o-mini": "Hi"}, deadline_s=1800, t=t)
    assert set(items["lane"]) == {"batch"} and set(items["hedge_at_s"]) == {1200.0}
    assert asked == [900.0]  # what is answered by the cancel is kept; after it, nothing
    # A hedge time inside the cancel's wait leaves nothing to bet on.
    assert set(quote(catalog, settings, {"gpt-4o-mini": "Hi"}, deadline_s=800, t=t)["lane"]) == {"online"}
