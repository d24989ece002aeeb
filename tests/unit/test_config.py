"""Configuration: TOML file, environment overrides, validation errors, providers and [[models]]."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import DEFAULT_PROVIDERS, load_settings
from batchrouter.core.errors import CatalogError, ConfigError

FULL = """
database = "ledger.duckdb"

[storage]
root = "s3://bucket/prefix"
endpoint_url = "http://127.0.0.1:9000"
region = "eu-west-1"

[providers.local]
kind = "openai_compatible"
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "LOCAL_KEY"
rpm = 100

[[models]]
name = "gpt-4o-mini"
provider = "openai"
input_usd_per_mtok = 0.2

[workspaces.acme]
auto_approve_max_usd = 100

[workspaces.acme.policy]
allowed_providers = ["openai", "anthropic"]
deny_training = true
max_output_usd_per_mtok = 20
objective = "latency"
max_fallbacks = 1

[limits]
max_rows = 1000
max_item_bytes = 2048

[dispatch]
max_attempts = 7
"""


def write(tmp_path: Path, text: str, name: str = "batchrouter.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_file_loads_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHROUTER_STORAGE__ROOT")
    monkeypatch.delenv("BATCHROUTER_DATABASE")
    settings = load_settings(write(tmp_path, FULL))
    assert settings.database == "ledger.duckdb"
    assert (settings.storage.root, settings.storage.region) == ("s3://bucket/prefix", "eu-west-1")
    assert settings.storage.endpoint_url == "http://127.0.0.1:9000"
    local = settings.provider("local")
    assert (local.kind, local.base_url, local.api_key_env, local.rpm) == (
        "openai_compatible",
        "http://127.0.0.1:8000/v1",
        "LOCAL_KEY",
        100,
    )
    assert local.tpm == 2_000_000  # untouched keys keep their defaults
    (model,) = settings.models
    assert (model.name, model.provider, model.input_usd_per_mtok) == ("gpt-4o-mini", "openai", Decimal("0.2"))
    acme = settings.workspace("acme")
    assert acme.auto_approve_max_usd == Decimal("100")
    assert acme.policy.allowed_providers == ["openai", "anthropic"]
    assert acme.policy.deny_training is True
    assert acme.policy.max_output_usd_per_mtok == Decimal("20")
    assert (acme.policy.objective, acme.policy.max_fallbacks) == ("latency", 1)
    assert (settings.limits.max_rows, settings.limits.max_item_bytes) == (1000, 2048)
    assert settings.limits.max_manifest_bytes == 4 * 1024**3
    assert settings.dispatch.max_attempts == 7


def test_defaults_without_a_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHROUTER_STORAGE__ROOT")
    settings = load_settings()
    assert settings.storage.root == ".batchrouter/storage"
    assert settings.limits.max_rows == 2_000_000
    assert settings.limits.max_item_bytes == 1_048_576
    policy = settings.workspace("anyone").policy
    assert (policy.allowed_providers, policy.objective, policy.max_fallbacks) == (None, "cost", 2)


def test_environment_override_beats_the_file(tmp_path: Path) -> None:
    # conftest sets BATCHROUTER_STORAGE__ROOT to tmp_path/bucket.
    settings = load_settings(write(tmp_path, FULL))
    assert settings.storage.root == str(tmp_path / "bucket")


def test_nested_environment_override_keeps_the_other_file_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_LIMITS__MAX_ROWS", "5")
    settings = load_settings(write(tmp_path, FULL))
    assert settings.storage.root == str(tmp_path / "bucket")
    assert settings.storage.region == "eu-west-1"
    assert settings.storage.endpoint_url == "http://127.0.0.1:9000"
    assert settings.limits.max_rows == 5
    assert settings.limits.max_item_bytes == 2048


def test_config_file_named_by_batchrouter_config_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_CONFIG", str(write(tmp_path, "[limits]\nmax_rows = 42\n")))
    assert load_settings().limits.max_rows == 42


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml"):
        load_settings(missing)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[limits]\nmax_rows = 0\n", "limits.max_rows"),
        ('[limits]\nmax_item_bytes = "lots"\n', "limits.max_item_bytes"),
        ('[storage]\nbucket = "x"\n', "storage.bucket"),
        ('[workspaces.acme.policy]\nobjective = "cheapest"\n', "workspaces.acme.policy.objective"),
        ("[workspaces.acme.policy]\nmax_fallbacks = -1\n", "workspaces.acme.policy.max_fallbacks"),
        ('[providers.x]\nkind = "carrier-pigeon"\n', "providers.x.kind"),
        ("[dispatch]\nmax_attempts = 0\n", "dispatch.max_attempts"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert key in str(err.value)


def test_openai_compatible_provider_without_base_url_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="providers.local.*base_url"):
        load_settings(write(tmp_path, '[providers.local]\nkind = "openai_compatible"\n'))


def test_invalid_environment_override_raises_config_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_LIMITS__MAX_ROWS", "many")
    with pytest.raises(ConfigError, match="limits.max_rows"):
        load_settings()


def test_toml_syntax_error_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(write(tmp_path, "[limits\nmax_rows = 1\n", name="bad.toml"))


def test_builtin_providers_default_to_the_simulator() -> None:
    settings = load_settings()
    assert set(DEFAULT_PROVIDERS) == {"openai", "anthropic", "openrouter", "selfhosted"}
    for name in ("openai", "anthropic", "openrouter", "selfhosted"):
        assert settings.provider(name).kind == "simulator"
    assert settings.provider("anthropic").wire == "anthropic"
    assert settings.provider("openai").wire == "openai"


def test_configured_provider_replaces_the_builtin_default(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[providers.openai]\nkind = "openai"\n'))
    assert settings.provider("openai").kind == "openai"
    assert settings.provider("anthropic").kind == "simulator"


def test_unknown_provider_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="nobody"):
        load_settings().provider("nobody")


# --------------------------------------------------------------------------- [[models]] and the catalog


def test_model_override_changes_only_the_given_fields_of_a_catalog_entry(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL))
    base = load_catalog().entry("openai:gpt-4o-mini")
    entry = load_catalog(settings.models).entry("openai:gpt-4o-mini")
    assert entry.input_usd_per_mtok == Decimal("0.2")
    assert entry.output_usd_per_mtok == base.output_usd_per_mtok == Decimal("0.60")
    assert entry.context_window == base.context_window
    # The other route of the same model is untouched.
    assert load_catalog(settings.models).entry("openrouter:openai/gpt-4o-mini").input_usd_per_mtok == Decimal("0.15")


def test_model_override_adds_a_new_model(tmp_path: Path) -> None:
    text = """
[[models]]
name = "my-model"
provider = "local"
upstream = "my-upstream"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
context_window = 128000
max_output_tokens = 16000
tokenizer = "o200k_base"
trains_on_inputs = false
retention_days = 0
"""
    catalog = load_catalog(load_settings(write(tmp_path, text)).models)
    assert "my-model" in catalog.model_names()
    (entry,) = catalog.routes_for("my-model")
    assert entry.route == "local:my-upstream"
    assert entry.output_pico_per_token == 600_000  # 0.6 USD per million tokens
    # Optional fields come from the catalog defaults; the default cap is min(max output, 4096).
    assert (entry.expected_output_tokens, entry.token_factor, entry.default_max_tokens) == (256, Decimal("1.0"), 4096)
    assert catalog.version.startswith(load_catalog().version + "+")


def test_new_model_missing_required_fields_raises_catalog_error(tmp_path: Path) -> None:
    text = '[[models]]\nname = "half"\nprovider = "local"\nupstream = "x"\ninput_usd_per_mtok = 1\n'
    settings = load_settings(write(tmp_path, text))
    with pytest.raises(CatalogError) as err:
        load_catalog(settings.models)
    message = str(err.value)
    assert "half" in message
    for field in ("output_usd_per_mtok", "context_window", "max_output_tokens", "tokenizer"):
        assert field in message


def test_price_finer_than_a_pico_dollar_per_token_raises_catalog_error(tmp_path: Path) -> None:
    text = '[[models]]\nname = "gpt-4o-mini"\nprovider = "openai"\ninput_usd_per_mtok = 0.0000001\n'
    with pytest.raises(CatalogError, match="pico"):
        load_catalog(load_settings(write(tmp_path, text)).models)


def test_catalog_prices_are_integer_pico_dollars_per_token() -> None:
    entry = load_catalog().entry("openai:gpt-4o-mini")
    # 0.15 USD per million tokens = 0.15e12 / 1e6 pico-dollars per token = 150,000.
    assert (entry.input_pico_per_token, entry.output_pico_per_token) == (150_000, 600_000)


LANES = """
[lanes]
percentile = 0.9
margin_s = 300
min_observations = 10
batch_prior_p95_s = 7200
flex_slowdown = 2.5
poll_interval_s = 10
poll_max_s = 300
time_scale = 1440
default_deadline = "24h"

[lanes.batch_prior_p95_s_per_provider]
anthropic = 3600

[workspaces.rush]
default_deadline = "30m"

[workspaces.patient]
default_deadline = "none"
"""


def test_lanes_load_from_the_file_and_workspaces_override_the_default_deadline(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, LANES))
    lanes = settings.lanes
    assert (lanes.percentile, lanes.margin_s, lanes.min_observations, lanes.flex_slowdown) == (0.9, 300, 10, 2.5)
    assert (lanes.batch_prior_s("anthropic"), lanes.batch_prior_s("openai")) == (3600, 7200)
    assert [lanes.poll_delay_s(n) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert lanes.wall_s(86_400) == 60.0  # a provider day in a wall minute
    assert lanes.default_deadline == 86_400
    assert settings.default_deadline_s("rush") == 1_800
    assert settings.default_deadline_s("patient") is None  # "none": no deadline, whatever the default
    assert settings.default_deadline_s("anyone-else") == 86_400
    # A batch's own deadline wins; "asap" (ASAP) means none at all, whatever the default.
    assert settings.deadline_s("rush", None) == 1_800 and settings.deadline_s("rush", 600.0) == 600.0
    assert settings.deadline_s("anyone-else", 0.0) is None


def test_lanes_defaults_without_a_config_file() -> None:
    lanes = load_settings().lanes
    assert (lanes.percentile, lanes.margin_s, lanes.min_observations) == (0.9, 600, 20)
    assert (lanes.batch_prior_s("openai"), lanes.flex_slowdown) == (2 * 3600, 3.0)
    assert (lanes.poll_interval_s, lanes.poll_max_s, lanes.time_scale, lanes.default_deadline) == (30, 600, 1.0, None)
    assert load_settings().default_deadline_s("acme") is None


def test_lanes_keys_are_overridden_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_LANES__DEFAULT_DEADLINE", "4h")
    monkeypatch.setenv("BATCHROUTER_LANES__MIN_OBSERVATIONS", "3")
    monkeypatch.setenv("BATCHROUTER_LANES__BATCH_PRIOR_P95_S_PER_PROVIDER", '{"openai": 600}')
    settings = load_settings(write(tmp_path, LANES))
    assert (settings.lanes.default_deadline, settings.lanes.min_observations) == (14_400, 3)
    assert settings.lanes.batch_prior_s("openai") == 600
    assert settings.lanes.percentile == 0.9  # the file's other keys stay
    assert settings.default_deadline_s("rush") == 1_800


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('[lanes]\ndefault_deadline = "1 week"\n', "lanes.default_deadline", "'1 week' is not a duration"),
        ('[workspaces.w]\ndefault_deadline = "-1h"\n', "workspaces.w.default_deadline", "'-1h' is not a duration"),
        ("[lanes]\npercentile = 1.5\n", "lanes.percentile", "less than or equal to 1"),
        ("[lanes]\npoll_interval_s = 60\npoll_max_s = 30\n", "lanes", "poll_max_s (30) must be at least"),
        ("[lanes.batch_prior_p95_s_per_provider]\nopenai = 0\n", "lanes.batch_prior_p95_s_per_provider", "positive"),
        ("[lanes]\npercentil = 0.9\n", "lanes.percentil", "Extra inputs"),
    ],
)
def test_invalid_lanes_values_raise_config_error_naming_the_key(tmp_path: Path, text: str, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, text))
    assert f"{key}:" in str(refused.value) and says in str(refused.value)


def test_the_readme_configuration_example_loads_with_its_lanes(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    example = readme.split("\n## Configuration\n", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    settings = load_settings(write(tmp_path, example))
    assert settings.lanes.batch_prior_s("anthropic") == 3600
    assert settings.default_deadline_s("W") == 86_400
