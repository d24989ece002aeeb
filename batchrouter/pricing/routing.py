"""Routing: each accepted item gets a primary route and an ordered fallback chain.

A route is one catalog entry (`provider:upstream`). The workspace's `RoutePolicy` first removes
routes it forbids (provider lists, data policy, price caps); then, per item, routes whose context
window cannot hold the prompt plus its output cap are skipped, and the rest are ordered by the
policy's objective. The first is the primary route, the next `max_fallbacks` are the fallbacks.

An item's output cap is its `max_tokens`, else the model's default cap, shrunk to what the context
window leaves, and the smallest over its chain, so any route it may take honours it. The reservation
is priced on the most expensive route of the chain: a fallback can never cost more than was reserved.

Only routes that accept every feature of the item (`request_fields.route_features`: tools, `n`,
logprobs, images, ...) are candidates; an item with `n` choices reserves its output cap `n` times, and
one asking for `service_tier: priority` is priced at the route's priority prices.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from batchrouter.core.catalog import Catalog, CatalogEntry
from batchrouter.core.config import RoutePolicy, Settings
from batchrouter.intake.request_fields import FEATURE_FIELDS, route_features


@dataclass(frozen=True)
class Exclusion:
    """Why the policy removed a route."""

    route: str
    reason: str


def policy_exclusions(entry: CatalogEntry, policy: RoutePolicy) -> list[str]:
    """Every reason `policy` forbids `entry`; empty when the route is allowed."""
    reasons = []
    if policy.allowed_providers is not None and entry.provider not in policy.allowed_providers:
        reasons.append(f"provider {entry.provider} is not in allowed_providers")
    if entry.provider in policy.denied_providers:
        reasons.append(f"provider {entry.provider} is in denied_providers")
    if policy.deny_training and entry.trains_on_inputs:
        reasons.append("it may train on inputs (deny_training)")
    if policy.zero_retention and not entry.zero_retention:
        kept = "for an unknown time" if entry.retention_days is None else f"for {entry.retention_days} days"
        reasons.append(f"it retains data {kept} (zero_retention)")
    if policy.max_input_usd_per_mtok is not None and entry.input_usd_per_mtok > policy.max_input_usd_per_mtok:
        reasons.append(
            f"input price {entry.input_usd_per_mtok} USD/Mtok is over max_input_usd_per_mtok "
            f"{policy.max_input_usd_per_mtok}"
        )
    if policy.max_output_usd_per_mtok is not None and entry.output_usd_per_mtok > policy.max_output_usd_per_mtok:
        reasons.append(
            f"output price {entry.output_usd_per_mtok} USD/Mtok is over max_output_usd_per_mtok "
            f"{policy.max_output_usd_per_mtok}"
        )
    return reasons


def allowed_routes(catalog: Catalog, policy: RoutePolicy) -> tuple[pl.DataFrame, dict[str, list[Exclusion]]]:
    """(routes the policy allows, as `Catalog.routes_frame` rows; exclusions per model name)."""
    exclusions: dict[str, list[Exclusion]] = {}
    allowed = []
    for entry in catalog.entries:
        reasons = policy_exclusions(entry, policy)
        if reasons:
            exclusions.setdefault(entry.name, []).append(Exclusion(entry.route, "; ".join(reasons)))
        else:
            allowed.append(entry.route)
    routes = catalog.routes_frame().filter(pl.col("route").is_in(allowed))
    return routes, exclusions


def providers_for(models: list[str], *, catalog: Catalog, policy: RoutePolicy) -> list[str]:
    """The providers items of these models may be sent to (as primary or fallback) under `policy`.

    From the models alone, before any item is priced: a superset of the providers the routed items
    will use (an item's size or features can only remove routes).
    """
    routes, _ = allowed_routes(catalog, policy)
    return sorted(set(routes.filter(pl.col("model").is_in(models))["provider"].to_list()))


def route_items(items: pl.DataFrame, *, catalog: Catalog, policy: RoutePolicy) -> pl.DataFrame:
    """Route items.

    Args:
        items: `item` (key), `model`, `input_tokens`, `max_tokens` (nullable), `expected_output_tokens`.
        catalog: the catalog pricing the routes.
        policy: the workspace's route policy.

    Returns:
        One row per input item: `item`, `route`, `provider`, `upstream`, `fallbacks` (list of route
        ids), `output_cap`, `reserve_pico`, `expected_pico`, and `reject_code`/`reject_reason`
        (null when routed).
    """
    routes, exclusions = allowed_routes(catalog, policy)
    items = items.with_columns(
        pl.col("features") if "features" in items.columns else pl.lit(None, pl.List(pl.String)).alias("features"),
        (pl.col("n") if "n" in items.columns else pl.lit(None, pl.Int64)).fill_null(1).alias("n"),
        (pl.col("extra_output_tokens") if "extra_output_tokens" in items.columns else pl.lit(0, pl.Int64))
        .fill_null(0)
        .alias("extra_output_tokens"),
    )
    support = _route_support(catalog)
    cand = items.join(routes, on="model", how="inner")
    # Features, in long form: one row per (candidate, feature) of the few items that have any, so no
    # list is carried on every candidate row.
    wanted = (
        cand.filter(pl.col("features").is_not_null())
        .select("item", "route", pl.col("features").alias("feature"))
        .explode("feature")
    )
    accepted = support.select("route", pl.col("route_features").alias("feature")).explode("feature")
    lacking = wanted.join(accepted.with_columns(pl.lit(True).alias("_ok")), on=["route", "feature"], how="left")
    lacking = (
        lacking.filter(pl.col("_ok").is_null())
        .group_by("item", "route", maintain_order=True)
        .agg(pl.col("feature").alias("_missing"))
    )
    missing = lacking.group_by("item", maintain_order=True).agg(
        pl.format("{} does not take {}", pl.col("route"), pl.col("_missing").list.join(", ")).alias("_why"),
        pl.col("_missing").first().list.first().alias("_first_missing"),
    )
    cand = cand.join(lacking.select("item", "route"), on=["item", "route"], how="anti")
    priority = pl.col("features").list.contains("service_tier_priority").fill_null(False)
    prices = support.select("route", "priority_input_pico", "priority_output_pico")
    cand = cand.join(prices, on="route", how="left").with_columns(
        pl.when(priority).then(pl.col("priority_input_pico")).otherwise(pl.col("input_pico")).alias("input_pico"),
        pl.when(priority).then(pl.col("priority_output_pico")).otherwise(pl.col("output_pico")).alias("output_pico"),
    )
    cand = cand.with_columns(
        pl.coalesce(
            pl.col("max_tokens"),
            pl.min_horizontal(
                pl.col("default_max_tokens"),  # each route's own default cap
                pl.col("context_window") - pl.col("input_tokens"),
            ),
        ).alias("cap")
    )
    cand = cand.filter(
        (pl.col("cap") >= 1)
        & (pl.col("cap") <= pl.col("max_output_tokens"))
        & (pl.col("input_tokens") + pl.col("cap") <= pl.col("context_window"))
    ).with_columns(
        (
            pl.col("input_tokens") * pl.col("input_pico")
            + pl.min_horizontal(pl.col("expected_output_tokens"), pl.col("cap")) * pl.col("n") * pl.col("output_pico")
        ).alias("expected_pico_route"),
    )
    order = _order(policy)
    chain_len = 1 + policy.max_fallbacks
    chains = (
        cand.sort(["item", *order])
        .group_by("item", maintain_order=True)
        .head(chain_len)
        .group_by("item", maintain_order=True)
        .agg(
            pl.col("route").first().alias("route"),
            pl.col("provider").first().alias("provider"),
            pl.col("upstream").first().alias("upstream"),
            pl.col("route").slice(1).alias("fallbacks"),
            pl.col("cap").min().alias("output_cap"),
            pl.col("input_pico").alias("_in"),
            pl.col("output_pico").alias("_out"),
            pl.col("input_tokens").first().alias("_tokens"),
            pl.col("expected_pico_route").first().alias("expected_pico"),
            pl.col("expected_output_tokens").first().alias("_expected_out"),
            pl.col("n").first().alias("_n"),
            pl.col("extra_output_tokens").first().alias("_extra_out"),
        )
        .with_columns(
            (
                pl.col("_tokens") * pl.col("_in")
                + (pl.col("output_cap") * pl.col("_n") + pl.col("_extra_out")) * pl.col("_out")
            )
            .list.max()
            .alias("reserve_pico"),
            # Recomputed on the chain-wide cap so expected <= reserve always holds.
            (
                pl.col("_tokens") * pl.col("_in").list.first()
                + pl.min_horizontal(pl.col("_expected_out"), pl.col("output_cap"))
                * pl.col("_n")
                * pl.col("_out").list.first()
            ).alias("expected_pico"),
        )
        .drop("_in", "_out", "_tokens", "_expected_out", "_n", "_extra_out")
    )
    largest = routes.group_by("model").agg(pl.col("context_window").max().alias("_largest"))
    out = items.select("item", "model", "input_tokens", "max_tokens").join(chains, on="item", how="left")
    out = out.join(largest, on="model", how="left").join(missing, on="item", how="left")
    no_route = {model: "; ".join(f"{x.route}: {x.reason}" for x in found) for model, found in exclusions.items()}
    unrouted = pl.col("route").is_null()
    context_reason = pl.format(
        "the prompt is {} tokens; with max_tokens it does not fit the context window of any allowed route "
        "(largest: {} tokens); shorten the prompt or lower max_tokens",
        pl.col("input_tokens"),
        pl.col("_largest"),
    )
    policy_reason = pl.format(
        "route policy allows no route for model {}: {}",
        pl.col("model"),
        pl.col("model").replace_strict(no_route, default="no provider offers it", return_dtype=pl.String),
    )
    unsupported = unrouted & pl.col("_why").is_not_null()
    feature_field = pl.col("_first_missing").replace_strict(FEATURE_FIELDS, default=pl.col("_first_missing"))
    feature_reason = pl.format(
        "no allowed route for model {} accepts {}: {}; remove the field or choose a model whose routes take it",
        pl.col("model"),
        feature_field,
        pl.col("_why").list.join("; "),
    )
    return out.with_columns(
        pl.when(unsupported)
        .then(pl.lit("unsupported_field"))
        .when(unrouted & pl.col("_largest").is_not_null())
        .then(pl.lit("context_too_long"))
        .when(unrouted)
        .then(pl.lit("no_route"))
        .alias("reject_code"),
        pl.when(unsupported).then(feature_field).alias("reject_field"),
        pl.when(unsupported)
        .then(feature_reason)
        .when(unrouted & pl.col("_largest").is_not_null())
        .then(context_reason)
        .when(unrouted)
        .then(policy_reason)
        .alias("reject_reason"),
    ).select(
        "item",
        "route",
        "provider",
        "upstream",
        "fallbacks",
        "output_cap",
        "reserve_pico",
        "expected_pico",
        "reject_code",
        "reject_field",
        "reject_reason",
    )


def _route_support(catalog: Catalog) -> pl.DataFrame:
    """Per route: the request features it accepts and its priority-tier prices (null where not sold)."""
    rows = [
        {
            "route": e.route,
            "route_features": sorted(route_features(e)),
            "priority_input_pico": e.priority_input_pico_per_token,
            "priority_output_pico": e.priority_output_pico_per_token,
        }
        for e in catalog.entries
    ]
    schema: dict[str, pl.DataType] = {
        "route": pl.String(),
        "route_features": pl.List(pl.String()),
        "priority_input_pico": pl.Int64(),
        "priority_output_pico": pl.Int64(),
    }
    return pl.DataFrame(rows, schema=schema)


def _order(policy: RoutePolicy) -> list[str | pl.Expr]:
    if policy.objective == "latency":
        return ["typical_latency_ms", "expected_pico_route", "route"]
    if policy.objective == "balanced":
        # Each route's cost and latency relative to the best available for that item, equally weighted.
        score = (pl.col("expected_pico_route") + 1) / (pl.col("expected_pico_route").min().over("item") + 1) + (
            pl.col("typical_latency_ms") / pl.col("typical_latency_ms").min().over("item")
        )
        return [score, "route"]
    return ["expected_pico_route", "typical_latency_ms", "route"]


def policy_summary(settings: Settings, workspace: str) -> RoutePolicy:
    """The route policy in force for `workspace`."""
    return settings.workspace(workspace).policy
