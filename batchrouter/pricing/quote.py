"""Quotes: exact token counts, routes and integer micro-dollar prices for every item of a manifest.

Per accepted item:
  reserve_usd_micros  = ceil(input_tokens x input price + (output_cap x n + predicted) x output price), on
                        the most expensive route of its chain (the primary route when it has none);
                        `predicted` is a `prediction`'s tokens, which may be billed as output on top
  expected_usd_micros = the same on the primary route with min(expected output, output_cap) tokens
input_tokens counts what the provider bills as input: messages as OpenAI counts them, tool definitions
and schemas (`tokens`), and image parts by the model's published rule (`images`); reasoning tokens
are output inside the cap; a `service_tier: priority` item is priced at the priority tier.
Both round up to the micro-dollar and are at least 1 for a billable item (a non-zero price).
Each item also has a lane (`pricing.lanes`: online, flex or the provider's batch API) and the
expected price on it, `lane_expected_usd_micros`; the quote's `expected_usd_micros` adds those up,
its `by_lane` shows per route and lane the items, the price and the saving against all-online. The
reserve never depends on the lane: it is the online price, an upper bound of every lane.
The quote records the catalog version that priced it; its id is a digest of everything that
determined it (manifest bytes, workspace, catalog version, route policy), so quoting the same
manifest twice under the same terms gives the same quote id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from batchrouter.core.amounts import PICO_PER_MICRO
from batchrouter.core.catalog import Catalog
from batchrouter.core.config import RoutePolicy
from batchrouter.intake import guards, images, tokens
from batchrouter.intake.manifest import Manifest
from batchrouter.pricing import lanes as lanes_
from batchrouter.pricing import routing

QUOTE_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "item_id": pl.String(),
    "model": pl.String(),
    "status": pl.String(),  # accepted | rejected
    "reject_code": pl.String(),
    "reject_field": pl.String(),
    "reject_reason": pl.String(),
    "input_tokens": pl.Int64(),
    "output_cap": pl.Int64(),
    "route": pl.String(),
    "provider": pl.String(),
    "upstream": pl.String(),
    "fallbacks": pl.List(pl.String()),
    "reserve_usd_micros": pl.Int64(),
    "expected_usd_micros": pl.Int64(),
    "lane": pl.String(),
    "lane_expected_usd_micros": pl.Int64(),
    "hedge_at_s": pl.Float64(),
}

# Given the accepted items (`row`, `route`, `expected_usd_micros`, ...), their lanes (LANE_SCHEMA).
LaneChooser = Callable[[pl.DataFrame], pl.DataFrame]


@dataclass(frozen=True)
class Quote:
    """A priced, routed manifest: one row per manifest row, accepted or rejected."""

    quote_id: str
    workspace: str
    catalog_version: str
    source: str
    manifest_sha256: str
    items: pl.DataFrame  # QUOTE_SCHEMA
    deadline_s: float | None = None

    @property
    def accepted(self) -> pl.DataFrame:
        return self.items.filter(pl.col("status") == "accepted")

    def summary(self) -> dict[str, Any]:
        """The quote as the JSON object `batchrouter quote --json` prints."""
        accepted = self.accepted
        by_route = (
            accepted.group_by("route", "provider", "model")
            .agg(
                pl.len().alias("items"),
                pl.col("input_tokens").sum(),
                pl.col("output_cap").sum().alias("max_output_tokens"),
                pl.col("reserve_usd_micros").sum(),
                pl.col("expected_usd_micros").sum(),
            )
            .sort("route", "model")
        )
        rejections = self.items.filter(pl.col("status") == "rejected").select(
            "row",
            "item_id",
            pl.col("reject_field").alias("field"),
            pl.col("reject_code").alias("code"),
            pl.col("reject_reason").alias("reason"),
        )
        return {
            "quote_id": self.quote_id,
            "workspace": self.workspace,
            "catalog_version": self.catalog_version,
            "source": self.source,
            "manifest_sha256": self.manifest_sha256,
            "items": self.items.height,
            "accepted": accepted.height,
            "rejected": self.items.height - accepted.height,
            "input_tokens": int(accepted["input_tokens"].sum() or 0),
            "reserve_usd_micros": int(accepted["reserve_usd_micros"].sum() or 0),
            "expected_usd_micros": int(accepted["lane_expected_usd_micros"].sum() or 0),
            "online_expected_usd_micros": int(accepted["expected_usd_micros"].sum() or 0),
            "deadline_s": self.deadline_s,
            "by_route": by_route.to_dicts(),
            "by_lane": lanes_.lane_summary(accepted),
            "rejections": rejections.to_dicts(),
        }


def pico_to_micros(pico: pl.Expr) -> pl.Expr:
    """Round pico-dollars up to whole micro-dollars (so any non-zero amount is at least 1): `amounts.micros_up`
    on a column."""
    return (pico + (PICO_PER_MICRO - 1)) // PICO_PER_MICRO


def quote_id_for(
    manifest_sha256: str, workspace: str, catalog_version: str, policy: RoutePolicy, deadline_s: float | None = None
) -> str:
    terms: list[Any] = [manifest_sha256, workspace, catalog_version, policy.model_dump(mode="json")]
    if deadline_s is not None:  # a quote without a deadline keeps the id it always had
        terms.append({"deadline_s": deadline_s})
    basis = json.dumps(terms, sort_keys=True)
    return "q_" + hashlib.sha256(basis.encode()).hexdigest()[:24]


def build_quote(
    manifest: Manifest,
    *,
    workspace: str,
    catalog: Catalog,
    policy: RoutePolicy,
    workers: int | None = None,
    lanes: LaneChooser | None = None,
    deadline_s: float | None = None,
) -> Quote:
    """Count, route and price every accepted item of `manifest`; rejected rows keep their reason.

    `lanes` picks each accepted item's lane (`pricing.lanes.choose_lanes` under the batch's deadline
    `deadline_s`); without it every item is online.
    """
    items = manifest.items.with_row_index("item")
    if policy.retired_models == "refuse":
        items = reject_retired(items)
    items = reject_restricted(items, policy=policy)
    models = catalog.models_frame()
    valid = items.filter(pl.col("reject_code").is_null()).join(models, on="model", how="left", maintain_order="left")
    counted = valid.with_columns(
        (tokens.input_tokens(valid, workers=workers) + image_input_tokens(valid, catalog)).alias("input_tokens"),
        tokens.predicted_tokens(valid).alias("extra_output_tokens"),
    )
    routed = routing.route_items(
        counted.select(
            "item",
            "model",
            "input_tokens",
            "max_tokens",
            "expected_output_tokens",
            "features",
            "n",
            "extra_output_tokens",
        ),
        catalog=catalog,
        policy=policy,
    )
    priced = routed.with_columns(
        pico_to_micros(pl.col("reserve_pico")).alias("reserve_usd_micros"),
        pico_to_micros(pl.col("expected_pico")).alias("expected_usd_micros"),
    ).rename({c: f"route_{c}" for c in ("reject_code", "reject_field", "reject_reason")})
    merged = (
        items.join(priced.drop("reserve_pico", "expected_pico"), on="item", how="left")
        .join(counted.select("item", "input_tokens"), on="item", how="left")
        .sort("item")
    )
    rejected = pl.col("reject_code").is_not_null() | pl.col("route_reject_code").is_not_null()
    out = merged.with_columns(
        pl.coalesce("reject_code", "route_reject_code").alias("reject_code"),
        pl.coalesce(
            "reject_field",
            pl.when(pl.col("route_reject_code").is_not_null()).then(pl.coalesce("route_reject_field", pl.lit("model"))),
        ).alias("reject_field"),
        pl.coalesce("reject_reason", "route_reject_reason").alias("reject_reason"),
        pl.when(rejected).then(pl.lit("rejected")).otherwise(pl.lit("accepted")).alias("status"),
    ).with_columns(
        # A rejected row keeps its token count (useful to explain context_too_long) but no price or route.
        *[
            pl.when(pl.col("status") == "accepted").then(pl.col(c)).alias(c)
            for c in (
                "route",
                "provider",
                "upstream",
                "fallbacks",
                "output_cap",
                "reserve_usd_micros",
                "expected_usd_micros",
            )
        ]
    )
    out = _with_lanes(out, lanes)
    table = out.select(list(QUOTE_SCHEMA)).cast(QUOTE_SCHEMA)  # type: ignore[arg-type]
    return Quote(
        deadline_s=deadline_s,
        quote_id=quote_id_for(manifest.sha256, workspace, catalog.version, policy, deadline_s),
        workspace=workspace,
        catalog_version=catalog.version,
        source=manifest.source,
        manifest_sha256=manifest.sha256,
        items=table,
    )


def _with_lanes(items: pl.DataFrame, lanes: LaneChooser | None) -> pl.DataFrame:
    accepted = pl.col("status") == "accepted"
    if lanes is None:
        return items.with_columns(
            pl.when(accepted).then(pl.lit(str(lanes_.Lane.ONLINE))).alias("lane"),
            pl.col("expected_usd_micros").alias("lane_expected_usd_micros"),
            pl.lit(None, pl.Float64).alias("hedge_at_s"),
        )
    chosen = lanes(items.filter(accepted))
    return items.join(chosen, on="row", how="left", maintain_order="left")


def image_input_tokens(items: pl.DataFrame, catalog: Catalog) -> pl.Series:
    """Per item, the input tokens of its image parts: the most any route of its model may bill for them."""
    out = [0] * items.height
    if "images" not in items.columns:
        return pl.Series("image_tokens", out, dtype=pl.Int64)
    with_images = items.select(pl.int_range(pl.len()).alias("i"), "model", "images").filter(
        pl.col("images").list.len() > 0
    )
    for i, model, parts in with_images.iter_rows():
        routes = [e for e in catalog.routes_for(model) if e.image_rule != "none"]
        out[i] = max(
            (
                sum(images.image_tokens(e, detail=p["detail"], width=p["width"], height=p["height"]) for p in parts)
                for e in routes
            ),
            default=0,
        )
    return pl.Series("image_tokens", out, dtype=pl.Int64)


def reject_retired(items: pl.DataFrame) -> pl.DataFrame:
    """Reject items naming a retired model, with its successor (the manifest already resolved it)."""
    hit = pl.col("reject_code").is_null() & pl.col("retired_from").is_not_null()
    reason = pl.format(
        "model '{}' is retired by its provider; its successor is '{}': change the model name, or set "
        'retired_models = "successor" in the workspace\'s route policy to run such items on the successor',
        pl.col("retired_from"),
        pl.col("model"),
    )
    return items.with_columns(
        pl.when(hit).then(pl.lit("retired_model")).otherwise("reject_code").alias("reject_code"),
        pl.when(hit).then(pl.lit("model")).otherwise("reject_field").alias("reject_field"),
        pl.when(hit).then(reason).otherwise("reject_reason").alias("reject_reason"),
    )


def reject_restricted(items: pl.DataFrame, *, policy: RoutePolicy | None = None, redact: bool = False) -> pl.DataFrame:
    """Reject open items holding card numbers or credentials (`guards`), unless `policy` allows the kind.

    The reason names the field and the format found, never the value. With `redact`, a rejected
    item's scanned texts are dropped too, so the value is not kept in what is written from this
    table (the batch's manifest.parquet). Needs the `item` row-index column.
    """
    policy = policy or RoutePolicy()
    cards, credentials = not policy.cards_allowed, not policy.credentials_allowed
    if not (cards or credentials):
        return items
    open_rows = items.filter(pl.col("reject_code").is_null())
    found = guards.scan(open_rows, cards=cards, credentials=credentials)
    hits = pl.concat([open_rows.select("item"), found], how="horizontal").filter(pl.col("kind").is_not_null())
    if hits.height == 0:
        return items
    what = pl.when(pl.col("kind") == "card").then(pl.lit("a payment card number")).otherwise(pl.lit("a credential"))
    key = pl.when(pl.col("kind") == "card").then(pl.lit("allow_cards")).otherwise(pl.lit("allow_credentials"))
    reason = pl.format(
        "{} holds {} ({}), which the terms forbid sending; remove it, or set {} in the workspace's route "
        "policy if you are entitled to",
        pl.col("field"),
        what,
        pl.col("format"),
        key,
    )
    hit = pl.col("_reason").is_not_null()
    return (
        items.join(hits.select("item", pl.col("field").alias("_field"), reason.alias("_reason")), on="item", how="left")
        .with_columns(
            pl.when(hit).then(pl.lit("restricted_content")).otherwise("reject_code").alias("reject_code"),
            pl.when(hit).then(pl.col("_field")).otherwise("reject_field").alias("reject_field"),
            pl.when(hit).then(pl.col("_reason")).otherwise("reject_reason").alias("reject_reason"),
            *[
                pl.when(hit & redact).then(None).otherwise(c).alias(c)
                for c in (*guards.SCANNED_COLUMNS, "billed_text")
                if c in items.columns
            ],
        )
        .drop("_field", "_reason")
    )


def routed_items(manifest: Manifest, quote: Quote) -> pl.DataFrame:
    """Accepted items with everything dispatch needs: request content plus route and prices."""
    request = manifest.items.filter(pl.col("reject_code").is_null()).select(
        "item_id", "system", "prompt", "messages", "temperature", "metadata", "params", "n", "endpoint"
    )
    priced = quote.accepted.select(
        "row",
        "item_id",
        "model",
        "route",
        "provider",
        "upstream",
        "fallbacks",
        "input_tokens",
        "output_cap",
        "reserve_usd_micros",
        "expected_usd_micros",
        "lane",
        "hedge_at_s",
    )
    return priced.join(request, on="item_id", how="left", maintain_order="left")


def with_lane_columns(items: pl.DataFrame) -> pl.DataFrame:
    """A quote's items with the lane columns (a quote made before lanes: every accepted item online)."""
    if "lane" in items.columns:
        return items
    return _with_lanes(items, None)
