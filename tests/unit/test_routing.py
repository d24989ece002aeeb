"""Routing: every field of the workspace route policy, route order per objective, and no_route."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import LimitsConfig, ModelConfig, RoutePolicy
from batchrouter.intake.manifest import read_manifest
from batchrouter.pricing.quote import build_quote

LLAMA_OPENROUTER = "openrouter:meta-llama/llama-3.1-8b-instruct"
LLAMA_SELF = "selfhosted:meta-llama/Llama-3.1-8B-Instruct"
MINI_OPENAI = "openai:gpt-4o-mini"
MINI_OPENROUTER = "openrouter:openai/gpt-4o-mini"


def _route(provider: str, out_price: str, latency: int, **extra: Any) -> ModelConfig:
    fields: dict[str, Any] = {
        "name": "tri",
        "provider": provider,
        "upstream": f"tri-{provider}",
        "input_usd_per_mtok": Decimal("0"),
        "output_usd_per_mtok": Decimal(out_price),
        "context_window": 100_000,
        "max_output_tokens": 1000,
        "tokenizer": "o200k_base",
        "trains_on_inputs": False,
        "retention_days": 0,
        "typical_latency_ms": latency,
    }
    fields.update(extra)
    return ModelConfig(**fields)


# A model "tri" on three routes with input price 0, so an item's expected cost is its output alone:
#                 output USD/Mtok   latency
#   cheap  (selfhosted)    1.0       4000 ms
#   middle (openrouter)    2.0       1000 ms
#   fast   (openai)       10.0        500 ms
CHEAP, MIDDLE, FAST = "selfhosted:tri-selfhosted", "openrouter:tri-openrouter", "openai:tri-openai"


@pytest.fixture
def tri() -> Catalog:
    return load_catalog(
        [_route("selfhosted", "1.0", 4000), _route("openrouter", "2.0", 1000), _route("openai", "10.0", 500)]
    )


def route(catalog: Catalog, model: str, policy: RoutePolicy, text: str = "Say this is a test!", **body: Any) -> dict:
    line = json.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
        }
    )
    manifest = read_manifest("r.jsonl", line.encode(), catalog=catalog, limits=LimitsConfig())
    quote = build_quote(manifest, workspace="w", catalog=catalog, policy=policy, workers=1)
    (row,) = quote.items.to_dicts()
    return row


def chain(row: dict) -> list[str]:
    return [row["route"], *row["fallbacks"]]


# --------------------------------------------------------------------------- provider lists


def test_allowed_providers_keeps_only_those_providers(catalog: Catalog) -> None:
    row = route(catalog, "gpt-4o-mini", RoutePolicy(allowed_providers=["openrouter"]))
    assert chain(row) == [MINI_OPENROUTER]
    assert row["provider"] == "openrouter"


def test_default_policy_allows_every_provider(catalog: Catalog) -> None:
    row = route(catalog, "gpt-4o-mini", RoutePolicy())
    assert sorted(chain(row)) == sorted([MINI_OPENAI, MINI_OPENROUTER])


def test_denied_providers_removes_those_providers(catalog: Catalog) -> None:
    row = route(catalog, "gpt-4o-mini", RoutePolicy(denied_providers=["openai"]))
    assert chain(row) == [MINI_OPENROUTER]


def test_denied_provider_wins_over_allowed_provider(catalog: Catalog) -> None:
    policy = RoutePolicy(allowed_providers=["openai", "openrouter"], denied_providers=["openrouter"])
    assert chain(route(catalog, "gpt-4o-mini", policy)) == [MINI_OPENAI]


# --------------------------------------------------------------------------- data policy


def test_without_deny_training_llama_may_fall_back_to_openrouter(catalog: Catalog) -> None:
    row = route(catalog, "llama-3.1-8b-instruct", RoutePolicy())
    assert chain(row) == [LLAMA_SELF, LLAMA_OPENROUTER]


def test_deny_training_drops_the_openrouter_llama_route_that_trains_on_inputs(catalog: Catalog) -> None:
    assert catalog.entry(LLAMA_OPENROUTER).trains_on_inputs is True
    row = route(catalog, "llama-3.1-8b-instruct", RoutePolicy(deny_training=True))
    assert chain(row) == [LLAMA_SELF]


def test_deny_training_with_only_openrouter_allowed_is_no_route(catalog: Catalog) -> None:
    policy = RoutePolicy(deny_training=True, allowed_providers=["openrouter"])
    row = route(catalog, "llama-3.1-8b-instruct", policy)
    assert (row["status"], row["reject_code"]) == ("rejected", "no_route")
    assert LLAMA_OPENROUTER in row["reject_reason"]
    assert "deny_training" in row["reject_reason"]


def test_zero_retention_keeps_only_routes_with_zero_retention(catalog: Catalog) -> None:
    row = route(catalog, "llama-3.1-8b-instruct", RoutePolicy(zero_retention=True))
    assert chain(row) == [LLAMA_SELF]


def test_zero_retention_rejects_a_model_whose_routes_all_retain_data(catalog: Catalog) -> None:
    row = route(catalog, "gpt-4o-mini", RoutePolicy(zero_retention=True))
    assert (row["status"], row["reject_code"], row["reject_field"]) == ("rejected", "no_route", "model")
    # The reason names every excluded route and why.
    assert MINI_OPENAI in row["reject_reason"]
    assert MINI_OPENROUTER in row["reject_reason"]
    assert "zero_retention" in row["reject_reason"]
    assert row["route"] is None
    assert row["reserve_usd_micros"] is None


# --------------------------------------------------------------------------- price caps


def test_max_input_price_drops_routes_above_it_and_keeps_equal_prices(catalog: Catalog) -> None:
    # gpt-4o-mini input is 0.15 on both routes: a cap of exactly 0.15 keeps them.
    assert route(catalog, "gpt-4o-mini", RoutePolicy(max_input_usd_per_mtok=Decimal("0.15")))["status"] == "accepted"
    row = route(catalog, "gpt-4o-mini", RoutePolicy(max_input_usd_per_mtok=Decimal("0.14")))
    assert row["reject_code"] == "no_route"
    assert "max_input_usd_per_mtok" in row["reject_reason"]


def test_max_output_price_drops_routes_above_it(tri: Catalog) -> None:
    row = route(tri, "tri", RoutePolicy(max_output_usd_per_mtok=Decimal("2")))
    assert chain(row) == [CHEAP, MIDDLE]


def test_max_output_price_below_every_route_is_no_route(catalog: Catalog) -> None:
    # claude-sonnet-4-5 costs 15 USD/Mtok output on both of its routes.
    row = route(catalog, "claude-sonnet-4-5", RoutePolicy(max_output_usd_per_mtok=Decimal("5")))
    assert row["reject_code"] == "no_route"
    assert "anthropic:claude-sonnet-4-5-20250929" in row["reject_reason"]
    assert "openrouter:anthropic/claude-sonnet-4.5" in row["reject_reason"]
    assert "max_output_usd_per_mtok" in row["reject_reason"]


# --------------------------------------------------------------------------- objective and fallbacks


def test_cost_objective_orders_routes_cheapest_first(tri: Catalog) -> None:
    # Expected output min(256, 100) = 100 tokens: cheap 100 x 1.0, middle 100 x 2.0, fast 100 x 10.0.
    row = route(tri, "tri", RoutePolicy(objective="cost"), max_tokens=100)
    assert chain(row) == [CHEAP, MIDDLE, FAST]


def test_latency_objective_orders_routes_fastest_first(tri: Catalog) -> None:
    row = route(tri, "tri", RoutePolicy(objective="latency"), max_tokens=100)
    assert chain(row) == [FAST, MIDDLE, CHEAP]


def test_balanced_objective_weighs_cost_and_latency_relative_to_the_best(tri: Catalog) -> None:
    # Scores (cost / cheapest + latency / fastest): cheap 1 + 4000/500 = 9, middle 2 + 1000/500 = 4,
    # fast 10 + 1 = 11; the lowest score goes first.
    row = route(tri, "tri", RoutePolicy(objective="balanced"), max_tokens=100)
    assert chain(row) == [MIDDLE, CHEAP, FAST]


def test_primary_route_is_priced_for_expected_cost(tri: Catalog) -> None:
    latency = route(tri, "tri", RoutePolicy(objective="latency"), max_tokens=100)
    # Expected on the primary (fast, 10 USD/Mtok): 100 x 10 = 1000 micro-dollars; reserve on the most
    # expensive route of the chain, also fast.
    assert (latency["expected_usd_micros"], latency["reserve_usd_micros"]) == (1000, 1000)
    cost = route(tri, "tri", RoutePolicy(objective="cost"), max_tokens=100)
    # Expected on cheap: 100 x 1 = 100; reserve still covers fast in the chain: 1000.
    assert (cost["expected_usd_micros"], cost["reserve_usd_micros"]) == (100, 1000)


def test_max_fallbacks_limits_the_chain(tri: Catalog) -> None:
    assert route(tri, "tri", RoutePolicy(max_fallbacks=1), max_tokens=100)["fallbacks"] == [MIDDLE]
    assert route(tri, "tri", RoutePolicy(), max_tokens=100)["fallbacks"] == [MIDDLE, FAST]


def test_max_fallbacks_zero_gives_no_fallbacks_and_reserves_on_the_primary(tri: Catalog) -> None:
    row = route(tri, "tri", RoutePolicy(max_fallbacks=0), max_tokens=100)
    assert row["route"] == CHEAP
    assert row["fallbacks"] == []
    assert row["reserve_usd_micros"] == 100


def test_routes_whose_context_window_cannot_hold_the_item_are_skipped() -> None:
    # The fast route's window is 50 tokens: 13 input + 100 output does not fit, so it is skipped.
    small = load_catalog(
        [
            _route("selfhosted", "1.0", 4000),
            _route("openrouter", "2.0", 1000),
            _route("openai", "10.0", 500, context_window=50),
        ]
    )
    row = route(small, "tri", RoutePolicy(objective="latency"), max_tokens=100)
    assert chain(row) == [MIDDLE, CHEAP]


def test_no_route_reason_lists_excluded_routes_of_the_model_only(tri: Catalog) -> None:
    row = route(tri, "tri", RoutePolicy(allowed_providers=["anthropic"]))
    assert row["reject_code"] == "no_route"
    for excluded in (CHEAP, MIDDLE, FAST):
        assert excluded in row["reject_reason"]
    assert "allowed_providers" in row["reject_reason"]
    assert MINI_OPENAI not in row["reject_reason"]
