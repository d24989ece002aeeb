"""The catalog's prices agree with the installed price source (genai-prices) at the catalog's date."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import ModelConfig
from batchrouter.pricing.price_source import SOURCE_PROVIDERS, catalog_date, catalog_drift, entry_drift, source_price


def test_every_priced_route_equals_the_source_exactly(catalog: Catalog) -> None:
    drifts = catalog_drift(catalog)
    assert not drifts, "catalog.toml disagrees with genai-prices (see tools/catalog_prices.py):\n" + "\n".join(
        str(d) for d in drifts
    )


def test_every_route_of_a_priced_provider_is_known_to_the_source(catalog: Catalog) -> None:
    on = catalog_date(catalog)
    priced = [e for e in catalog.entries if e.provider in SOURCE_PROVIDERS]
    assert len(priced) >= 20
    assert all(source_price(e.provider, e.upstream, on=on) is not None for e in priced)


def test_every_alias_names_the_same_source_model_as_its_route(catalog: Catalog) -> None:
    on = catalog_date(catalog)
    for entry in catalog.entries:
        if not entry.aliases:
            continue
        price = source_price(entry.provider, entry.upstream, on=on)
        assert price is not None
        for alias in entry.aliases:
            assert price.matches(alias), f"{alias!r} is not {price.model_id!r} in genai-prices"


def test_a_price_that_differs_from_the_source_is_reported_with_route_and_field() -> None:
    changed = load_catalog([ModelConfig(name="gpt-4o-mini", provider="openai", input_usd_per_mtok=Decimal("0.16"))])
    drifts = [d for d in catalog_drift(changed) if d.route == "openai:gpt-4o-mini"]
    fields = {d.field for d in drifts}
    assert fields == {"input_usd_per_mtok", "batch input price"}
    (drift,) = [d for d in drifts if d.field == "input_usd_per_mtok"]
    assert (drift.catalog, drift.source) == (Decimal("0.16"), Decimal("0.15"))
    assert "openai:gpt-4o-mini" in str(drift) and "genai-prices" in str(drift)


def test_a_batch_discount_the_source_does_not_sell_is_reported() -> None:
    changed = load_catalog([ModelConfig(name="gpt-4o-mini", provider="openrouter", batch_discount=Decimal("0.5"))])
    (drift,) = [d for d in catalog_drift(changed) if d.route == "openrouter:openai/gpt-4o-mini"]
    assert (drift.field, drift.catalog, drift.source) == ("batch_discount", Decimal("0.5"), Decimal(0))


def test_a_context_window_past_the_first_price_tier_is_reported(catalog: Catalog) -> None:
    entry = catalog.entry("openai:gpt-5.6-sol")
    price = source_price(entry.provider, entry.upstream, on=catalog_date(catalog))
    assert price is not None and price.tier_start == 272_000
    (drift,) = entry_drift(replace(entry, context_window=1_050_000), price)
    assert drift.field.startswith("context_window")


def test_a_model_the_source_does_not_know_is_reported() -> None:
    ghost = ModelConfig(
        name="ghost",
        provider="openai",
        upstream="gpt-ghost-1",
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("1"),
        context_window=1000,
        max_output_tokens=100,
        tokenizer="o200k_base",
    )
    drifts = [d for d in catalog_drift(load_catalog([ghost])) if d.route == "openai:gpt-ghost-1"]
    assert [d.field for d in drifts] == ["model"]


def test_prices_are_read_at_the_catalog_date_not_today() -> None:
    # genai-prices records o3's price cut of 2025-06-10: 10/40 before, 2/8 after.
    before = source_price("openai", "o3", on=date(2025, 6, 1))
    after = source_price("openai", "o3", on=date(2025, 6, 11))
    assert before is not None and after is not None
    assert (before.input, before.output) == (Decimal("10"), Decimal("40"))
    assert (after.input, after.output) == (Decimal("2"), Decimal("8"))


@pytest.mark.parametrize("version", ["2026-12-01", "2026-12-01+1a2b3c4d"])
def test_catalog_date_is_the_version_day(version: str) -> None:
    assert catalog_date(Catalog(version=version, entries=())) == date(2026, 12, 1)
