"""Lanes: the ways an item can reach its route, and the cheapest one that still meets the deadline.

    online  the provider's API at list price, as fast as its rate limits allow (the dispatcher);
    flex    OpenAI's `service_tier: "flex"`: batch prices, slower, refused when the provider lacks
            capacity (the item is asked again on flex while its hedge time allows, then goes online);
    batch   the provider's own Batch API (OpenAI Batch, Anthropic Message Batches): batch prices,
            usually answered in minutes, sometimes only after a day;
    priority OpenAI's `service_tier: "priority"`: the online API, faster, at the priority prices.

An item whose own request names a tier keeps it: `service_tier: "priority"` is on the priority lane
(priced at the priority prices by `pricing.routing`), `"flex"` on the flex lane (where the route
sells it; elsewhere intake has dropped the feature). Neither is ever chosen for an item that did not
ask: priority costs more than online, and the choice below is for the cheapest lane.

A route offers `batch` when its catalog entry has a batch discount and its provider speaks a wire
with a Batch API (OpenAI's or Anthropic's); `flex` when the entry sells flex on OpenAI's wire. An
OpenAI-compatible server (vLLM and the like) has neither: online only.

The choice, per route: lanes cheapest first; a lane is taken when its predicted completion (a high
percentile of what BatchRouter measured, `pricing.predictions`) still leaves time, before the
deadline less a margin, to send every item of the route online should the lane fall behind: the
hedge. The time a lane must be done by is its `hedge_at_s`; past it, unanswered items move online.
A batch with no deadline goes online (as soon as possible).

The hedge, not the percentile, is what keeps the deadline. So on a route whose only faster lane is
online, a provider batch predicted late at the percentile is still tried when it pays in expectation:
the share of like runs measured done by the hedge time, times the batch discount, is the expected
saving against online, and at least `lanes.min_expected_saving` of it takes the lane (a 30 minute
deadline with batches done in minutes most of the time). The share is read at the moment the batch
would be asked to cancel (its hedge time less `LanesConfig.cancel_wait_s`), since what it answered by
then is kept, and from fewer runs than a percentile needs (`bet_min_observations`). Where flex is
sold, flex costs what a batch costs and is not a bet, so a batch there still needs its percentile.

The reservation is not a lane's price: it stays the online price of the most expensive route of the
item's chain, so a hedged item never needs more credit than was reserved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import polars as pl

from batchrouter.core.catalog import Catalog, CatalogEntry
from batchrouter.core.config import Lane as Lane
from batchrouter.core.config import ProviderConfig, Settings

# Wires with a provider Batch API, and the one that sells flex.
_BATCH_WIRES = frozenset({"openai", "anthropic"})
_FLEX_WIRE = "openai"

LANE_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "lane": pl.String(),
    "lane_expected_usd_micros": pl.Int64(),
    "hedge_at_s": pl.Float64(),  # seconds after the batch's start; null on the online lane
}


def wire_of(name: str, config: ProviderConfig) -> str:
    """The wire format provider `name` speaks: its kind's, or for the simulator its `wire` (else by name)."""
    if config.kind != "simulator":
        return "openai" if config.kind == "openai_compatible" else config.kind
    if config.wire:
        return config.wire
    return name if name in ("anthropic", "openrouter") else "openai"


def lanes_of(entry: CatalogEntry, config: ProviderConfig) -> list[Lane]:
    """The lanes a route offers, online first."""
    wire = wire_of(entry.provider, config)
    lanes = [Lane.ONLINE]
    if config.kind == "openai_compatible":  # a self-hosted server speaks OpenAI's online API only
        return lanes
    if entry.flex and wire == _FLEX_WIRE:
        lanes.append(Lane.FLEX)
    if entry.batch_discount > 0 and wire in _BATCH_WIRES:
        lanes.append(Lane.BATCH)
    return lanes


def price_factor(entry: CatalogEntry, lane: Lane) -> Fraction:
    """What a lane charges as a share of the item's online price (flex is sold at batch prices; a
    priority item's online price is already the priority price)."""
    return Fraction(1) if lane in (Lane.ONLINE, Lane.PRIORITY) else 1 - Fraction(entry.batch_discount)


# The lane an item's own request names by its features (`intake.request_fields`).
_REQUESTED: dict[str, Lane] = {"service_tier_priority": Lane.PRIORITY, "service_tier_flex": Lane.FLEX}


def requested_lane(features: list[str] | None) -> Lane | None:
    """The lane an item asked for with `service_tier` (priority or flex), else None (the choice's)."""
    for feature in features or ():
        if feature in _REQUESTED:
            return _REQUESTED[feature]
    return None


def lane_price(online_usd_micros: int, factor: Fraction) -> int:
    """The online price scaled to a lane, rounded up to the micro-dollar (at least 1 when non-zero)."""
    return -(-online_usd_micros * factor.numerator // factor.denominator)


@dataclass(frozen=True)
class Timing:
    """What the choice needs to know about time, each figure in seconds (of BatchRouter's clock)."""

    # Predicted completion of `lines` items on (provider, lane): a high percentile of what was measured.
    predict: Callable[[str, Lane, int], float]
    # How long `items` items of a route, `tokens` in all (`rate_tokens`), take online at its limits.
    online_s: Callable[[CatalogEntry, int, int], float]
    margin_s: float
    # How long they take on flex: the same rate limits, each request slower (None: as online).
    flex_s: Callable[[CatalogEntry, int, int], float] | None = None
    # The share of `lines`-item runs on (provider, lane) measured done within a time (None: no bets),
    # and the expected saving (a share of the online price) a bet on a late-predicted lane must reach.
    done_share: Callable[[str, Lane, int, float], float] | None = None
    min_expected_saving: float = 1.0
    # How long before its hedge time a provider batch is asked to cancel (`LanesConfig.cancel_wait_s`).
    cancel_wait_s: float = 0.0


def choose_lanes(
    accepted: pl.DataFrame, *, deadline_s: float | None, catalog: Catalog, settings: Settings, timing: Timing
) -> pl.DataFrame:
    """Each accepted item's lane (LANE_SCHEMA), from `row`, `route`, `expected_usd_micros` and, for the
    token rate's share of the time online (`rate_tokens`), `input_tokens` and `output_cap`.

    `deadline_s`: seconds from the batch's start to its deadline; None sends everything online.
    """
    rows: list[dict[str, object]] = []
    if "features" not in accepted.columns:
        accepted = accepted.with_columns(pl.lit(None, dtype=pl.List(pl.String())).alias("features"))
    for (route,), part in accepted.group_by("route", maintain_order=True):
        entry = catalog.entry(str(route))
        asked = [requested_lane(f) for f in part["features"].to_list()]
        free = sum(lane is None for lane in asked)
        lane, hedge_at = Lane.ONLINE, None
        if deadline_s is not None and free:
            tokens = sum(t for t, own in zip(rate_tokens(part, entry).to_list(), asked, strict=True) if own is None)
            online_s = timing.online_s(entry, free, tokens)
            lane, hedge_at = _cheapest(
                entry, settings.provider(entry.provider), (free, tokens), deadline_s, online_s, timing
            )
        for (row, expected), own in zip(part.select("row", "expected_usd_micros").iter_rows(), asked, strict=True):
            on = own or lane
            rows.append({"row": row, "lane": str(on), "hedge_at_s": None if own else hedge_at,
                         "lane_expected_usd_micros": lane_price(int(expected), price_factor(entry, on))})  # fmt: skip
    return pl.DataFrame(rows, schema=LANE_SCHEMA)


def rate_tokens(items: pl.DataFrame, entry: CatalogEntry) -> pl.Series:
    """Per item of `entry`'s route, what it spends of the route's token rate online: its input plus, for
    each of its `n` choices, the output expected of the route (`expected_output_tokens`) within its cap.
    (The dispatcher takes the whole cap from the bucket when it sends a request and gives back what the
    answer did not use, `execution.dispatch`; over a run the rate pays for what the answers used.)"""

    def column(name: str, missing: int) -> pl.Expr:
        return pl.col(name).fill_null(missing) if name in items.columns else pl.lit(missing)

    output = pl.min_horizontal(column("output_cap", entry.expected_output_tokens), pl.lit(entry.expected_output_tokens))
    tokens = column("input_tokens", 0) + output * column("n", 1)
    return items.with_columns(tokens.cast(pl.Int64).alias("_rate_tokens"))["_rate_tokens"]


def _cheapest(
    entry: CatalogEntry,
    config: ProviderConfig,
    size: tuple[int, int],
    deadline_s: float,
    online_s: float,
    timing: Timing,
) -> tuple[Lane, float | None]:
    """The cheapest lane that finishes in time with room to hedge, and when it must be done by.

    `size`: the route's items and their tokens (`rate_tokens`).

    The hedge runs down the lanes: a provider batch behind at its hedge time moves to flex where the
    route sells it (and from flex, online), so a batch's hedge time leaves room for both.
    """
    items, tokens = size
    offered = sorted(lanes_of(entry, config), key=lambda lane: (price_factor(entry, lane), lane != Lane.BATCH))
    flex_s = 0.0
    if Lane.FLEX in offered:
        flex_s = timing.flex_s(entry, items, tokens) if timing.flex_s is not None else online_s
    for lane in offered:
        if lane == Lane.ONLINE:
            break
        # The last moment the route's items can still move to the faster lanes and make the deadline.
        hedge_at = deadline_s - timing.margin_s - online_s - (flex_s if lane == Lane.BATCH else 0.0)
        predicted = flex_s if lane == Lane.FLEX else timing.predict(entry.provider, lane, items)
        if predicted <= hedge_at:
            return lane, hedge_at
        # The bet: what a provider batch answered by the time it is asked to cancel is kept.
        cancel_at = hedge_at - timing.cancel_wait_s
        if lane == Lane.BATCH and cancel_at > 0 and timing.done_share is not None and Lane.FLEX not in offered:
            share = timing.done_share(entry.provider, lane, items, cancel_at)
            if share * (1 - price_factor(entry, lane)) >= timing.min_expected_saving:
                return lane, hedge_at
    return Lane.ONLINE, None


def route_s(settings: Settings, entry: CatalogEntry, items: int, *, tokens: int = 0, lane: Lane = Lane.ONLINE) -> float:
    """Seconds (on the batch's clock) for `items` items of a route, `tokens` in all (`rate_tokens`),
    sent now on `lane` (online or flex) at its request and token rate limits and its provider's
    concurrency; a flex request takes `lanes.flex_slowdown` times the route's typical latency, so flex is
    often bound by the concurrency rather than the rate."""
    from batchrouter.pricing.predictions import Predictions

    slowdown = settings.lanes.flex_slowdown if lane == Lane.FLEX else 1.0
    latency_s = entry.typical_latency_ms / 1000 * slowdown
    provider = settings.provider(entry.provider)
    seconds = Predictions.online_s(
        items, provider.rpm, latency_s, provider.max_concurrency, tokens=tokens, tpm=provider.tpm
    )
    return seconds * settings.lanes.time_scale


def hedge_lane(settings: Settings, entry: CatalogEntry, items: int, *, tokens: int, time_left_s: float) -> Lane:
    """The lane a route's `items` (`tokens` in all, `rate_tokens`) take when their provider batch let
    go of them with `time_left_s` to the deadline (less the margin): flex, at the batch price, where the
    route sells it and the flex run ends in that time; else online. (The batch's hedge time left room
    for flex and then online; a hedge starts a poll's lag after it. A flex request the provider refuses
    is refused at once and, its hedge time being past, its item goes online then, inside the margin.)"""
    if Lane.FLEX not in lanes_of(entry, settings.provider(entry.provider)):
        return Lane.ONLINE
    flex_s = route_s(settings, entry, items, tokens=tokens, lane=Lane.FLEX)
    return Lane.FLEX if flex_s <= time_left_s else Lane.ONLINE


def lane_summary(accepted: pl.DataFrame) -> list[dict[str, object]]:
    """Per route and lane: items, the price on that lane, the online price and the saving."""
    if "lane" not in accepted.columns or not accepted.height:
        return []
    return (
        accepted.group_by("route", "provider", "model", "lane")
        .agg(
            pl.len().alias("items"),
            pl.col("lane_expected_usd_micros").sum().alias("expected_usd_micros"),
            pl.col("expected_usd_micros").sum().alias("online_expected_usd_micros"),
        )
        .with_columns((pl.col("online_expected_usd_micros") - pl.col("expected_usd_micros")).alias("saving_usd_micros"))
        .sort("route", "lane")
        .to_dicts()
    )


def chooser(
    settings: Settings, catalog: Catalog, deadline_s: float | None, *, in_flight: Mapping[str, int] | None = None
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """The lane choice a quote makes under `deadline_s`, from what was measured (`pricing.predictions`).

    Every figure is on the batch's clock: provider seconds, which pass `lanes.time_scale` times faster
    than the wall in a simulation, so the online lane's wall seconds are scaled to it.
    `in_flight`: per route, lines other batches have in provider batches (`batch_lane.lines_in_flight`).
    Their hedges would share the route's rate limit with this batch's, so its hedge leaves time for
    them as well: many batches due at once never count the route's whole rate each. Their tokens are
    not recorded; each is counted at this batch's tokens per item on the route.
    """
    from batchrouter.pricing.predictions import Predictions

    lanes = settings.lanes
    predictions = Predictions(settings.database)
    others = dict(in_flight or {})

    def with_others(entry: CatalogEntry, items: int, tokens: int) -> tuple[int, int]:
        more = others.get(entry.route, 0)
        return items + more, tokens + (-(-tokens * more // items) if items else 0)

    def online_s(entry: CatalogEntry, items: int, tokens: int) -> float:
        items, tokens = with_others(entry, items, tokens)
        return route_s(settings, entry, items, tokens=tokens)

    def flex_s(entry: CatalogEntry, items: int, tokens: int) -> float:
        items, tokens = with_others(entry, items, tokens)
        return route_s(settings, entry, items, tokens=tokens, lane=Lane.FLEX)

    def predict(provider: str, lane: Lane, lines: int) -> float:
        return predictions.completion_s(provider, lane, lines, config=lanes)

    def done_share(provider: str, lane: Lane, lines: int, by_s: float) -> float:
        return predictions.done_share(provider, lane, lines, by_s, config=lanes)

    timing = Timing(predict=predict, online_s=online_s, margin_s=lanes.margin_s, flex_s=flex_s,
                    done_share=done_share, min_expected_saving=lanes.min_expected_saving,
                    cancel_wait_s=lanes.cancel_wait_s())  # fmt: skip
    return lambda accepted: choose_lanes(accepted, deadline_s=deadline_s, catalog=catalog, settings=settings,
                                         timing=timing)  # fmt: skip
