"""Quotes: integer micro-dollar arithmetic, output caps, summaries, ids and catalog versions."""

from __future__ import annotations

import io
import json
import math
import re
from decimal import Decimal
from typing import Any

import bpe_openai
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import LimitsConfig, ModelConfig, RoutePolicy
from batchrouter.intake import tokens
from batchrouter.intake.manifest import Manifest, read_manifest
from batchrouter.intake.sample import sample_manifest
from batchrouter.pricing.quote import Quote, build_quote

CL100K = bpe_openai.get_encoding("cl100k_base")
BASE_VERSION = "2026-12-01"

# gpt-3.5-turbo is retired from the built-in catalog; a [[models]] entry serving it (a self-hosted or
# proxied copy) keeps the cl100k_base path and a small context window under test.
LEGACY_CL100K = ModelConfig(
    name="gpt-3.5-turbo",
    provider="legacy",
    upstream="gpt-3.5-turbo-0125",
    input_usd_per_mtok=Decimal("0.50"),
    output_usd_per_mtok=Decimal("1.50"),
    context_window=16385,
    max_output_tokens=4096,
    default_max_tokens=1024,
    tokenizer="cl100k_base",
    trains_on_inputs=False,
    retention_days=30,
)


@pytest.fixture
def legacy() -> Catalog:
    return load_catalog([LEGACY_CL100K])


def jsonl(*bodies: dict[str, Any]) -> bytes:
    return "\n".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        for i, body in enumerate(bodies)
    ).encode()


def body(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def quote_of(
    data: bytes,
    catalog: Catalog,
    policy: RoutePolicy | None = None,
    *,
    name: str = "q.jsonl",
    workspace: str = "w",
) -> Quote:
    manifest = read_manifest(name, data, catalog=catalog, limits=LimitsConfig())
    return build_quote(manifest, workspace=workspace, catalog=catalog, policy=policy or RoutePolicy(), workers=1)


def micros(tokens_in: int, in_usd_per_mtok: str, tokens_out: int, out_usd_per_mtok: str) -> int:
    """ceil(tokens x USD per million tokens) in micro-dollars: USD/Mtok is exactly micro-dollars per token."""
    exact = tokens_in * Decimal(in_usd_per_mtok) + tokens_out * Decimal(out_usd_per_mtok)
    return math.ceil(exact)


def sample_quote(catalog: Catalog, items: int = 300) -> tuple[Manifest, Quote]:
    buf = io.BytesIO()
    sample_manifest(items, seed=5).write_parquet(buf)
    manifest = read_manifest("sample.parquet", buf.getvalue(), catalog=catalog, limits=LimitsConfig())
    return manifest, build_quote(manifest, workspace="w", catalog=catalog, policy=RoutePolicy(), workers=1)


# --------------------------------------------------------------------------- arithmetic


def test_reserve_for_reference_prompt_on_gpt_4o_mini_is_62_micros(catalog: Catalog) -> None:
    quote = quote_of(jsonl(body("gpt-4o-mini", "Say this is a test!", max_tokens=100)), catalog)
    row = quote.accepted.row(0, named=True)
    # 13 input tokens x 0.15 + 100 output tokens x 0.60 micro-dollars = 1.95 + 60 = 61.95 -> 62.
    assert row["input_tokens"] == 13
    assert row["output_cap"] == 100
    assert micros(13, "0.15", 100, "0.60") == 62
    assert row["reserve_usd_micros"] == 62


def test_expected_uses_the_smaller_of_expected_output_and_cap(catalog: Catalog) -> None:
    quote = quote_of(
        jsonl(body("gpt-4o", "Say this is a test!", max_tokens=100), body("gpt-4o", "Say this is a test!")),
        catalog,
    )
    capped, default = quote.items.to_dicts()
    # gpt-4o: 2.50 in, 10.00 out, expected output 256 (catalog default), default cap 4096.
    # cap 100 < 256: expected = 13 x 2.5 + 100 x 10 = 32.5 + 1000 = 1032.5 -> 1033 = reserve.
    assert capped["expected_usd_micros"] == 1033
    assert capped["reserve_usd_micros"] == 1033
    # no cap: expected = 32.5 + 256 x 10 = 2592.5 -> 2593; reserve = 32.5 + 4096 x 10 = 40992.5 -> 40993.
    assert default["expected_usd_micros"] == 2593
    assert default["reserve_usd_micros"] == 40993


@pytest.mark.parametrize(
    ("model", "in_price", "out_price", "default_cap"),
    [
        ("gpt-4o-mini", "0.15", "0.60", 4096),
        ("gpt-4.1-mini", "0.40", "1.60", 4096),
        ("claude-sonnet-4-5", "3.00", "15.00", 4096),
    ],
)
def test_reserve_is_input_plus_default_cap_at_list_prices_rounded_up(
    catalog: Catalog, model: str, in_price: str, out_price: str, default_cap: int
) -> None:
    quote = quote_of(jsonl(body(model, "Summarise the quarterly revenue report, please.")), catalog)
    row = quote.accepted.row(0, named=True)
    assert row["output_cap"] == default_cap
    assert row["reserve_usd_micros"] == micros(row["input_tokens"], in_price, default_cap, out_price)
    assert row["expected_usd_micros"] == micros(row["input_tokens"], in_price, 256, out_price)


def test_default_cap_shrinks_to_fit_the_context_window(legacy: Catalog) -> None:
    text = "hello " * 15800
    quote = quote_of(jsonl(body("gpt-3.5-turbo", text)), legacy)
    row = quote.accepted.row(0, named=True)
    # Input: 3 + 1 (role) + content + 3, counted with cl100k_base; the window of gpt-3.5-turbo is 16385,
    # so the default cap of 1024 shrinks to what is left.
    assert row["input_tokens"] == 7 + len(CL100K.encode_ordinary(text))
    left = 16385 - row["input_tokens"]
    assert 0 < left < 1024
    assert row["output_cap"] == left
    assert row["reserve_usd_micros"] == micros(row["input_tokens"], "0.50", left, "1.50")


def test_explicit_max_tokens_that_does_not_fit_is_context_too_long(legacy: Catalog) -> None:
    # The same ~15,808-token prompt fits with the shrunk default cap but not with max_tokens 1000.
    quote = quote_of(jsonl(body("gpt-3.5-turbo", "hello " * 15800, max_tokens=1000)), legacy)
    (row,) = quote.items.to_dicts()
    assert row["status"] == "rejected"
    assert row["reject_code"] == "context_too_long"


def test_prompt_longer_than_every_context_window_is_context_too_long(legacy: Catalog) -> None:
    quote = quote_of(jsonl(body("gpt-4o-mini", "ok"), body("gpt-3.5-turbo", "hello " * 20000)), legacy)
    ok, huge = quote.items.to_dicts()
    assert ok["status"] == "accepted"
    assert (huge["row"], huge["status"], huge["reject_code"]) == (2, "rejected", "context_too_long")
    assert "16385" in huge["reject_reason"]
    assert huge["reserve_usd_micros"] is None
    assert huge["route"] is None


def test_billable_item_costs_at_least_one_micro_dollar(catalog: Catalog) -> None:
    # llama on openrouter: 0.05 in, 0.08 out. "hi" is 1 o200k token x 1.25 -> 2; input 3 + 1 + 2 + 3 = 9,
    # plus 24 for the chat template's own framing = 33. 33 x 0.05 + 1 x 0.08 = 1.73 micro-dollars -> 2.
    quote = quote_of(
        jsonl(body("llama-3.1-8b-instruct", "hi", max_tokens=1)), catalog, RoutePolicy(allowed_providers=["openrouter"])
    )
    row = quote.accepted.row(0, named=True)
    assert row["input_tokens"] == 9 + tokens.ESTIMATE_REQUEST_OVERHEAD
    assert row["reserve_usd_micros"] == 2
    assert row["expected_usd_micros"] == 2


def test_zero_price_route_costs_nothing(catalog: Catalog) -> None:
    # zero_retention keeps only the self-hosted llama route, priced at 0.
    quote = quote_of(
        jsonl(body("llama-3.1-8b-instruct", "Say this is a test!", max_tokens=100)),
        catalog,
        RoutePolicy(zero_retention=True),
    )
    row = quote.accepted.row(0, named=True)
    assert row["provider"] == "selfhosted"
    assert (row["reserve_usd_micros"], row["expected_usd_micros"]) == (0, 0)


def test_reservation_covers_the_most_expensive_route_of_the_chain(catalog: Catalog) -> None:
    # Make openai's gpt-4o-mini twice as expensive on output (1.20); the cost objective then puts the
    # cheaper openrouter route first, with openai as fallback.
    pricier = load_catalog([ModelConfig(name="gpt-4o-mini", provider="openai", output_usd_per_mtok=Decimal("1.20"))])
    quote = quote_of(jsonl(body("gpt-4o-mini", "Say this is a test!", max_tokens=100)), pricier)
    row = quote.accepted.row(0, named=True)
    assert row["route"] == "openrouter:openai/gpt-4o-mini"
    assert row["fallbacks"] == ["openai:gpt-4o-mini"]
    # Reserve on the fallback (openai): 13 x 0.15 + 100 x 1.20 = 121.95 -> 122.
    assert row["reserve_usd_micros"] == micros(13, "0.15", 100, "1.20") == 122
    # Expected on the primary (openrouter): 13 x 0.15 + 100 x 0.60 = 61.95 -> 62.
    assert row["expected_usd_micros"] == micros(13, "0.15", 100, "0.60") == 62


def test_reservation_of_llama_covers_the_paid_fallback_of_a_free_primary(catalog: Catalog) -> None:
    quote = quote_of(jsonl(body("llama-3.1-8b-instruct", "Say this is a test!", max_tokens=100)), catalog)
    row = quote.accepted.row(0, named=True)
    assert row["provider"] == "selfhosted"
    assert row["fallbacks"] == ["openrouter:meta-llama/llama-3.1-8b-instruct"]
    # 15 + 24 input tokens (see test_tokens) x 0.05 + 100 x 0.08 = 1.95 + 8 = 9.95 -> 10 on the openrouter fallback.
    assert row["reserve_usd_micros"] == micros(15 + tokens.ESTIMATE_REQUEST_OVERHEAD, "0.05", 100, "0.08") == 10
    assert row["expected_usd_micros"] == 0


def test_output_cap_is_the_smallest_over_the_chain(catalog: Catalog) -> None:
    # A fallback route that allows at most 1000 output tokens forces the whole chain to that cap.
    smaller = load_catalog([ModelConfig(name="gpt-4o-mini", provider="openrouter", max_output_tokens=1000)])
    quote = quote_of(jsonl(body("gpt-4o-mini", "Say this is a test!")), smaller)
    row = quote.accepted.row(0, named=True)
    assert row["route"] == "openai:gpt-4o-mini"
    assert row["fallbacks"] == ["openrouter:openai/gpt-4o-mini"]
    assert row["output_cap"] == 1000
    assert row["reserve_usd_micros"] == micros(13, "0.15", 1000, "0.60")


def test_output_cap_shrinks_to_the_smallest_context_window_of_the_chain(catalog: Catalog) -> None:
    # openrouter's window cut to 2000 tokens leaves 2000 - 13 = 1987 for output there; openai keeps 4096.
    smaller = load_catalog([ModelConfig(name="gpt-4o-mini", provider="openrouter", context_window=2000)])
    row = quote_of(jsonl(body("gpt-4o-mini", "Say this is a test!")), smaller).accepted.row(0, named=True)
    assert row["fallbacks"] == ["openrouter:openai/gpt-4o-mini"]
    assert row["output_cap"] == 1987


def test_expected_never_exceeds_reserve(catalog: Catalog) -> None:
    _, quote = sample_quote(catalog)
    accepted = quote.accepted
    assert accepted.height > 0
    assert (accepted["expected_usd_micros"] <= accepted["reserve_usd_micros"]).all()
    billable = accepted.filter(pl.col("provider") != "selfhosted")
    assert (billable["reserve_usd_micros"] >= 1).all()


# --------------------------------------------------------------------------- rows and summary


def test_quote_keeps_one_row_per_manifest_row_with_manifest_rejections(catalog: Catalog) -> None:
    data = b"item_id,model,prompt\n1,gpt-4o-mini,hi\n2,nope,hi\n3,gpt-4o-mini,\n"
    quote = quote_of(data, catalog, name="q.csv")
    assert quote.items["row"].to_list() == [1, 2, 3]
    assert quote.items["status"].to_list() == ["accepted", "rejected", "rejected"]
    assert quote.items["reject_code"].to_list() == [None, "unknown_model", "empty_prompt"]
    assert quote.items.filter(pl.col("status") == "rejected")["reserve_usd_micros"].null_count() == 2


def test_quote_of_a_manifest_with_every_row_rejected_prices_nothing(catalog: Catalog) -> None:
    quote = quote_of(b"item_id,model,prompt\n1,nope,hi\n2,gpt-4o-mini,\n", catalog, name="q.csv")
    assert quote.items["status"].to_list() == ["rejected", "rejected"]
    summary = quote.summary()
    assert (summary["accepted"], summary["rejected"], summary["reserve_usd_micros"]) == (0, 2, 0)
    assert summary["by_route"] == []


def test_summary_has_every_key_the_readme_lists(catalog: Catalog) -> None:
    data = jsonl(body("gpt-4o-mini", "hi"), body("nope", "hi"))
    summary = quote_of(data, catalog).summary()
    for key in (
        "quote_id",
        "workspace",
        "catalog_version",
        "items",
        "accepted",
        "rejected",
        "reserve_usd_micros",
        "expected_usd_micros",
        "by_route",
        "rejections",
    ):
        assert key in summary
    (route,) = summary["by_route"]
    assert set(route) >= {
        "route",
        "provider",
        "model",
        "items",
        "input_tokens",
        "max_output_tokens",
        "reserve_usd_micros",
        "expected_usd_micros",
    }
    (rejection,) = summary["rejections"]
    assert rejection == {
        "row": 2,
        "item_id": "r1",
        "field": "model",
        "code": "unknown_model",
        "reason": rejection["reason"],
    }
    assert (summary["items"], summary["accepted"], summary["rejected"]) == (2, 1, 1)
    json.dumps(summary)  # the summary is plain JSON


def test_summary_by_route_sums_equal_the_totals(catalog: Catalog) -> None:
    _, quote = sample_quote(catalog)
    summary = quote.summary()
    by_route = summary["by_route"]
    assert len(by_route) >= 3
    assert sum(r["items"] for r in by_route) == summary["accepted"]
    assert sum(r["reserve_usd_micros"] for r in by_route) == summary["reserve_usd_micros"]
    assert sum(r["expected_usd_micros"] for r in by_route) == summary["expected_usd_micros"]
    assert sum(r["input_tokens"] for r in by_route) == quote.accepted["input_tokens"].sum()
    assert summary["reserve_usd_micros"] == quote.accepted["reserve_usd_micros"].sum()
    assert summary["accepted"] + summary["rejected"] == summary["items"] == 300


def test_summary_by_route_max_output_tokens_sums_the_caps(catalog: Catalog) -> None:
    data = jsonl(body("gpt-4o-mini", "a", max_tokens=10), body("gpt-4o-mini", "b", max_tokens=32))
    (route,) = quote_of(data, catalog).summary()["by_route"]
    assert (route["items"], route["max_output_tokens"]) == (2, 42)


# --------------------------------------------------------------------------- ids and versions


def test_quote_id_is_deterministic(catalog: Catalog) -> None:
    data = jsonl(body("gpt-4o-mini", "hi"))
    assert quote_of(data, catalog).quote_id == quote_of(data, catalog).quote_id


def test_quote_id_changes_with_policy_workspace_and_bytes(catalog: Catalog) -> None:
    data = jsonl(body("gpt-4o-mini", "hi"))
    base = quote_of(data, catalog).quote_id
    assert quote_of(data, catalog, RoutePolicy(objective="latency")).quote_id != base
    assert quote_of(data, catalog, RoutePolicy(max_fallbacks=0)).quote_id != base
    assert quote_of(data, catalog, workspace="other").quote_id != base
    assert quote_of(data + b"\n", catalog).quote_id != base


def test_quote_records_the_builtin_catalog_version(catalog: Catalog) -> None:
    quote = quote_of(jsonl(body("gpt-4o-mini", "hi")), catalog)
    assert catalog.version == BASE_VERSION
    assert quote.catalog_version == BASE_VERSION
    assert quote.summary()["catalog_version"] == BASE_VERSION


def test_model_override_changes_the_catalog_version_and_the_quote_id(catalog: Catalog) -> None:
    override = ModelConfig(name="gpt-4o-mini", provider="openai", input_usd_per_mtok=Decimal("0.30"))
    custom = load_catalog([override])
    assert re.fullmatch(re.escape(BASE_VERSION) + r"\+[0-9a-f]{8}", custom.version)
    data = jsonl(body("gpt-4o-mini", "hi"))
    quote = quote_of(data, custom)
    assert quote.catalog_version == custom.version
    assert quote.quote_id != quote_of(data, catalog).quote_id
    # A different override gives a different version; the same override gives the same one.
    assert load_catalog([override]).version == custom.version
    other = ModelConfig(name="gpt-4o-mini", provider="openai", input_usd_per_mtok=Decimal("0.31"))
    assert load_catalog([other]).version != custom.version


def test_model_override_prices_are_the_ones_quoted(catalog: Catalog) -> None:
    custom = load_catalog(
        [
            ModelConfig(
                name="gpt-4o-mini", provider="openai", input_usd_per_mtok=Decimal("1"), output_usd_per_mtok=Decimal("2")
            ),
            ModelConfig(
                name="gpt-4o-mini",
                provider="openrouter",
                input_usd_per_mtok=Decimal("1"),
                output_usd_per_mtok=Decimal("2"),
            ),
        ]
    )
    row = quote_of(jsonl(body("gpt-4o-mini", "Say this is a test!", max_tokens=100)), custom).accepted.row(
        0, named=True
    )
    # 13 x 1 + 100 x 2 = 213 micro-dollars, exact.
    assert row["reserve_usd_micros"] == 213


# Models whose routes all share one price, so every route of the chain prices the same.
_SINGLE_PRICE = {
    "gpt-4o-mini": ("0.15", "0.60", 16384),
    "gpt-4o": ("2.50", "10.00", 16384),
    "gpt-4.1-mini": ("0.40", "1.60", 32768),
    "claude-haiku-4-5": ("1.00", "5.00", 64000),
    "claude-sonnet-4-5": ("3.00", "15.00", 64000),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(
        st.tuples(
            st.sampled_from(sorted(_SINGLE_PRICE)),
            st.integers(min_value=1, max_value=64000),
            st.text(alphabet="abcdefghij klmnop,.!éü😀", min_size=1, max_size=300).filter(str.strip),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_reserve_and_expected_match_the_decimal_formula(picks: list[tuple[str, int, str]]) -> None:
    catalog = load_catalog()
    bodies = [body(model, text, max_tokens=min(cap, _SINGLE_PRICE[model][2])) for model, cap, text in picks]
    quote = quote_of(jsonl(*bodies), catalog)
    assert quote.items["status"].to_list() == ["accepted"] * len(picks)
    for row, sent in zip(quote.items.to_dicts(), bodies, strict=True):
        in_price, out_price, _ = _SINGLE_PRICE[row["model"]]
        cap = sent["max_tokens"]
        assert row["output_cap"] == cap
        assert row["reserve_usd_micros"] == micros(row["input_tokens"], in_price, cap, out_price)
        assert row["expected_usd_micros"] == micros(row["input_tokens"], in_price, min(256, cap), out_price)
        assert 1 <= row["expected_usd_micros"] <= row["reserve_usd_micros"]
