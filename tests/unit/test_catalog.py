"""The catalog: model names as users write them, retired models, new per-route fields, data-policy defaults."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from batchrouter.core.catalog import Catalog, load_catalog
from batchrouter.core.config import ModelConfig, RoutePolicy, load_settings
from batchrouter.core.errors import CatalogError, ConfigError
from batchrouter.pricing.routing import policy_exclusions

REALFILES = Path(__file__).resolve().parents[3] / "shared" / "realfiles"

# The [[models]] example of the README as first documented (commit 349d099), keys and values unchanged.
README_FIRST_MODEL = """
[[models]]                       # adds a model or overrides fields of a catalog entry (same name + provider)
name = "my-model"
provider = "NAME"
upstream = "gpt-4o-mini"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
context_window = 128000
max_output_tokens = 16000
tokenizer = "o200k_base"         # o200k_base | cl100k_base | estimate
trains_on_inputs = false
retention_days = 0
"""

NEW_MODEL_WITHOUT_POLICY = """
[[models]]
name = "house-model"
provider = "local"
upstream = "house-1"
input_usd_per_mtok = 1
output_usd_per_mtok = 2
context_window = 32000
max_output_tokens = 4000
tokenizer = "estimate"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "batchrouter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def models_in(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            names.add(json.loads(line)["body"]["model"])
    return names


# ------------------------------------------------------------------------------------------ resolve


def test_a_catalog_name_resolves_to_itself(catalog: Catalog) -> None:
    assert all(catalog.resolve(name) == name for name in catalog.model_names())


@pytest.mark.parametrize(
    ("written", "model"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5.2-2025-12-11", "gpt-5.2"),
        ("o3-2025-04-16", "o3"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        (" GPT-4o-Mini ", "gpt-4o-mini"),
    ],
)
def test_dated_snapshots_resolve_to_their_catalog_model(catalog: Catalog, written: str, model: str) -> None:
    assert catalog.resolve(written) == model


@pytest.mark.parametrize("name", ["gpt-9-imaginary", "", "gpt-4o-2099-01-01", "claude"])
def test_unknown_names_resolve_to_none(catalog: Catalog, name: str) -> None:
    assert catalog.resolve(name) is None
    assert name not in catalog.retired


@pytest.mark.parametrize(
    ("written", "successor"),
    [
        ("gpt-3.5-turbo", "gpt-5.6-terra"),
        ("gpt-3.5-turbo-0125", "gpt-5.6-terra"),
        ("gpt-4", "gpt-5.6-sol"),
        ("gpt-4-0613", "gpt-5.6-sol"),
        ("o3-mini", "gpt-5.6-sol"),
        ("o1", "gpt-5.6-sol"),
        ("o4-mini", "gpt-5.6-terra"),
        ("gpt-4.1-nano", "gpt-5.6-luna"),
        ("gpt-4.1-nano-2025-04-14", "gpt-5.6-luna"),
        # An older snapshot of a live model is its own retired model, not the live one.
        ("gpt-4o-2024-05-13", "gpt-5.6-sol"),
        ("claude-3-5-haiku-20241022", "claude-haiku-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4-6"),
    ],
)
def test_retired_models_and_their_snapshots_name_a_successor(catalog: Catalog, written: str, successor: str) -> None:
    assert catalog.resolve(written) is None
    assert catalog.retired[written] == successor


def test_successor_matches_names_the_way_resolve_does(catalog: Catalog) -> None:
    assert catalog.successor(" GPT-4-0613 ") == catalog.retired["gpt-4-0613"] == "gpt-5.6-sol"
    assert catalog.successor("gpt-4o") is None
    assert catalog.successor("gpt-9-imaginary") is None


def test_retired_frame_lists_every_retired_name_with_its_successor(catalog: Catalog) -> None:
    frame = catalog.retired_frame()
    assert frame.schema == pl.Schema({"alias": pl.String, "successor": pl.String})
    assert dict(zip(frame["alias"], frame["successor"], strict=True)) == catalog.retired


def test_every_successor_is_a_model_of_the_catalog(catalog: Catalog) -> None:
    assert catalog.retired
    assert {catalog.resolve(s) for s in catalog.retired.values()} <= set(catalog.model_names())


def test_no_name_is_both_served_and_retired(catalog: Catalog) -> None:
    assert not set(catalog.retired) & set(catalog.aliases_frame()["alias"].to_list())


@pytest.mark.skipif(not REALFILES.is_dir(), reason="shared realfiles not present")
def test_every_model_named_in_the_realfiles_resolves_or_is_retired_with_a_successor(catalog: Catalog) -> None:
    seen: dict[str, str] = {}
    for path in sorted(REALFILES.glob("*.jsonl")):
        for name in models_in(path):
            resolved = catalog.resolve(name)
            successor = catalog.retired.get(name)
            assert (resolved is None) != (successor is None), f"{path.name}: model {name!r}"
            seen[name] = resolved or f"retired -> {successor}"
    # The names the issue lists, as the files write them.
    assert seen["gpt-4o"] == "gpt-4o"
    assert seen["gpt-4o-mini"] == "gpt-4o-mini"
    assert seen["gpt-5.2"] == "gpt-5.2"
    assert seen["gpt-5.4-mini"] == "gpt-5.4-mini"
    assert seen["gpt-3.5-turbo-0125"] == "retired -> gpt-5.6-terra"
    assert seen["gpt-4"] == "retired -> gpt-5.6-sol"
    assert seen["o3-mini"] == "retired -> gpt-5.6-sol"
    assert seen["gpt-4.1-nano"] == "retired -> gpt-5.6-luna"


def test_aliases_frame_maps_every_name_that_resolves_to_its_model(catalog: Catalog) -> None:
    frame = catalog.aliases_frame()
    assert frame.schema == pl.Schema({"alias": pl.String, "model": pl.String})
    assert frame["alias"].is_unique().all()
    assert dict(zip(frame["alias"], frame["model"], strict=True)) == {
        alias: catalog.resolve(alias) for alias in frame["alias"]
    }
    # Vectorised use: join a manifest's model column.
    items = pl.DataFrame({"model": ["gpt-4o-2024-08-06", "gpt-4", "gpt-4o-mini"]})
    joined = items.join(frame, left_on="model", right_on="alias", how="left", suffix="_canonical")
    assert joined["model_canonical"].to_list() == ["gpt-4o", None, "gpt-4o-mini"]


def test_a_models_entry_named_like_a_retired_model_serves_it(tmp_path: Path) -> None:
    text = README_FIRST_MODEL.replace('name = "my-model"', 'name = "gpt-4"').replace('"NAME"', '"legacy"')
    catalog = load_catalog(load_settings(write(tmp_path, text)).models)
    assert catalog.resolve("gpt-4") == "gpt-4"
    assert "gpt-4" not in catalog.retired
    assert catalog.retired["gpt-4-0613"] == "gpt-5.6-sol"


def test_an_alias_given_to_two_models_is_a_catalog_error() -> None:
    twin = ModelConfig(name="gpt-4o-mini", provider="openai", aliases=["gpt-4o-2024-08-06"])
    with pytest.raises(CatalogError, match="gpt-4o-2024-08-06"):
        load_catalog([twin])


def test_an_alias_that_is_a_retired_name_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="retired model 'gpt-4'"):
        load_catalog([ModelConfig(name="gpt-4o", provider="openai", aliases=["gpt-4"])])


# --------------------------------------------------------------------- [[models]] and data policy


def test_the_readme_first_models_example_still_loads(tmp_path: Path) -> None:
    catalog = load_catalog(load_settings(write(tmp_path, README_FIRST_MODEL)).models)
    (entry,) = catalog.routes_for("my-model")
    assert (entry.route, entry.trains_on_inputs, entry.retention_days) == ("NAME:gpt-4o-mini", False, 0)
    assert (entry.cached_input_usd_per_mtok, entry.priority_input_usd_per_mtok, entry.flex) == (None, None, False)
    assert (entry.reasoning, entry.endpoints, entry.image_rule) == (False, ("chat",), "none")


def test_a_new_model_without_data_policy_loads_and_is_assumed_to_train_and_retain(tmp_path: Path) -> None:
    catalog = load_catalog(load_settings(write(tmp_path, NEW_MODEL_WITHOUT_POLICY)).models)
    (entry,) = catalog.routes_for("house-model")
    assert entry.trains_on_inputs is True
    assert entry.retention_days is None
    assert entry.zero_retention is False
    assert policy_exclusions(entry, RoutePolicy()) == []
    assert policy_exclusions(entry, RoutePolicy(deny_training=True)) == ["it may train on inputs (deny_training)"]
    assert policy_exclusions(entry, RoutePolicy(zero_retention=True)) == [
        "it retains data for an unknown time (zero_retention)"
    ]
    row = catalog.routes_frame().filter(pl.col("model") == "house-model").row(0, named=True)
    assert (row["trains_on_inputs"], row["retention_days"]) == (True, None)


def test_new_fields_can_be_set_from_models_entries(tmp_path: Path) -> None:
    text = (
        NEW_MODEL_WITHOUT_POLICY
        + 'cached_input_usd_per_mtok = 0.1\nreasoning = true\nendpoints = ["chat", "responses"]\n'
        + 'image_rule = "tile"\nimage_base_tokens = 85\nimage_tile_tokens = 170\naliases = ["house-model-2026-01-01"]\n'
    )
    catalog = load_catalog(load_settings(write(tmp_path, text)).models)
    (entry,) = catalog.routes_for("house-model")
    assert entry.cached_input_pico_per_token == 100_000
    assert (entry.reasoning, entry.endpoints, entry.image_rule) == (True, ("chat", "responses"), "tile")
    assert catalog.resolve("house-model-2026-01-01") == "house-model"


@pytest.mark.parametrize(
    "extra",
    ['image_rule = "pixels"\n', 'endpoints = ["completions"]\n', "image_patch_multiplier = 0\n", "flex = 3\n"],
)
def test_invalid_new_fields_are_config_errors(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, NEW_MODEL_WITHOUT_POLICY + extra))


def test_a_tile_rule_without_its_figures_is_a_catalog_error() -> None:
    with pytest.raises(CatalogError, match="image_rule 'tile' needs"):
        load_catalog([ModelConfig(name="gpt-4o", provider="openai", image_base_tokens=0)])


# --------------------------------------------------------------------------- frames and new fields


def test_routes_frame_carries_the_new_prices_as_integer_pico_or_null(catalog: Catalog) -> None:
    routes = {r["route"]: r for r in catalog.routes_frame().to_dicts()}
    mini = routes["openai:gpt-4o-mini"]
    assert (mini["input_pico"], mini["cached_input_pico"]) == (150_000, 75_000)
    assert (mini["priority_input_pico"], mini["priority_output_pico"]) == (250_000, 1_000_000)
    assert (mini["flex"], mini["reasoning"], mini["endpoints"]) == (False, False, ["chat", "responses"])
    assert (mini["image_rule"], mini["image_base_tokens"], mini["image_tile_tokens"]) == ("tile", 2833, 5667)
    sonnet = routes["anthropic:claude-sonnet-4-5-20250929"]
    assert (sonnet["priority_input_pico"], sonnet["flex"], sonnet["image_rule"]) == (None, False, "area")
    selfhosted = routes["selfhosted:meta-llama/Llama-3.1-8B-Instruct"]
    assert (selfhosted["cached_input_pico"], selfhosted["image_rule"]) == (None, "none")
    nano = routes["openai:gpt-5-nano"]
    assert (nano["reasoning"], nano["flex"], nano["image_patch_multiplier_milli"]) == (True, True, 2460)


def test_models_frame_says_whether_a_model_reasons_and_which_endpoints_it_speaks(catalog: Catalog) -> None:
    models = {r["model"]: r for r in catalog.models_frame().to_dicts()}
    assert (models["o3"]["reasoning"], models["gpt-4o"]["reasoning"]) == (True, False)
    assert models["gpt-4o-mini"]["endpoints"] == ["chat", "responses"]
    assert models["claude-sonnet-4-5"]["endpoints"] == ["chat"]


def test_the_models_users_pick_today_are_in_the_catalog(catalog: Catalog) -> None:
    names = set(catalog.model_names())
    assert {"gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.2", "gpt-5.4-mini", "gpt-5.6-sol"} <= names
    assert {"gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini", "o3"} <= names
    assert {"claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-haiku-4-5"} <= names
    assert {e.provider for e in catalog.entries} == {"openai", "anthropic", "openrouter", "selfhosted"}


def test_claude_estimates_stay_above_the_published_tokenizer_ratios(catalog: Catalog) -> None:
    # Older Claude tokenizer: o200k x 1.15 seen 20-50% short, so at least 1.5. Opus 4.7+ and the 5.x models
    # use a tokenizer measured at up to 1.47x as many tokens again (Anthropic says 1.0-1.35x): at least 1.5 x 1.5.
    for entry in catalog.entries:
        if "claude" not in entry.name:
            continue
        assert entry.tokenizer == "estimate"
        newer = entry.name.startswith(
            ("claude-opus-4-7", "claude-opus-4-8", "claude-opus-5", "claude-sonnet-5", "claude-haiku-5")
        )
        assert entry.token_factor >= (Decimal("1.5") * Decimal("1.5") if newer else Decimal("1.5")), entry.route


def test_tiered_routes_keep_their_context_window_below_the_first_tier(catalog: Catalog) -> None:
    # genai-prices prices gpt-5.5 and gpt-5.6 higher from 272k input tokens, Sonnet 4.5 from 200k.
    assert catalog.entry("openai:gpt-5.6-sol").context_window == 272_000
    assert catalog.entry("anthropic:claude-sonnet-4-5-20250929").context_window == 200_000
