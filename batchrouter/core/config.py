"""Configuration: one TOML file plus environment overrides, validated by pydantic-settings.

Sources, strongest first: keyword arguments, environment variables (`BATCHROUTER_` prefix, `__`
between nested keys, e.g. `BATCHROUTER_STORAGE__ROOT=s3://bucket/prefix`), the TOML file given by
`--config` or `BATCHROUTER_CONFIG`, then the defaults below. Every key is documented in the README.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from batchrouter.core.amounts import usd_to_micros
from batchrouter.core.durations import ASAP, parse_duration
from batchrouter.core.errors import ConfigError, IdentityError
from batchrouter.core.identity import canonical_workspace

ProviderKind = Literal["openai", "anthropic", "openrouter", "openai_compatible", "simulator"]
Tokenizer = Literal["o200k_base", "cl100k_base", "estimate"]
Endpoint = Literal["chat", "responses", "embeddings"]
ImageRule = Literal["tile", "patch", "area", "none"]
Objective = Literal["cost", "latency", "balanced"]


# How an item reaches its provider: online requests (the dispatcher), OpenAI's flex tier, or the provider's Batch API.
class Lane(StrEnum):
    """How an item reaches its route (`batchrouter.pricing.lanes`)."""

    ONLINE = "online"
    FLEX = "flex"
    BATCH = "batch"
    PRIORITY = "priority"


LANES: tuple[Lane, ...] = tuple(Lane)

_STRICT = ConfigDict(extra="forbid")


class StorageConfig(BaseModel):
    """Where batches live: a local folder or an `s3://bucket/prefix` URL."""

    model_config = _STRICT
    root: str = ".batchrouter/storage"
    endpoint_url: str | None = None
    region: str | None = None


class ProviderConfig(BaseModel):
    """One upstream provider account (or the simulator standing in for it)."""

    model_config = _STRICT
    kind: ProviderKind
    base_url: str | None = None
    api_key_env: str | None = None
    # Wire format the simulator speaks for this provider; other kinds imply theirs.
    wire: Literal["openai", "anthropic", "openrouter"] | None = None
    rpm: int = Field(default=6000, gt=0)
    tpm: int = Field(default=2_000_000, gt=0)
    max_concurrency: int = Field(default=256, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    # The provider's own batch API (`execution.provider_batches`): requests and bytes per batch (None: the
    # provider's published limit) and input tokens enqueued per upstream model across batches in flight
    # (None and models not listed: unlimited), as the account's tier allows.
    batch_max_requests: int | None = Field(default=None, gt=0)
    batch_max_bytes: int | None = Field(default=None, gt=0)
    batch_enqueued_tokens: int | None = Field(default=None, gt=0)
    batch_enqueued_tokens_per_model: dict[str, int] = Field(default_factory=dict)


class ModelConfig(BaseModel):
    """A `[[models]]` entry: adds a model or overrides fields of a catalog entry (same name and provider)."""

    model_config = _STRICT
    name: str
    provider: str
    upstream: str | None = None
    input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    batch_discount: Decimal | None = Field(default=None, ge=0, le=1)
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    default_max_tokens: int | None = Field(default=None, gt=0)
    expected_output_tokens: int | None = Field(default=None, gt=0)
    tokenizer: Tokenizer | None = None
    token_factor: Decimal | None = Field(default=None, ge=1)
    # Left out on a new model: assumed to train on inputs and to retain them (excluded by the
    # route policy's deny_training and zero_retention).
    trains_on_inputs: bool | None = None
    retention_days: int | None = Field(default=None, ge=0)
    typical_latency_ms: int | None = Field(default=None, gt=0)
    cached_input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    priority_input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    priority_output_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    flex: bool | None = None
    reasoning: bool | None = None
    endpoints: list[Endpoint] | None = None
    image_rule: ImageRule | None = None
    image_base_tokens: int | None = Field(default=None, ge=0)
    image_tile_tokens: int | None = Field(default=None, ge=0)
    image_patch_multiplier: Decimal | None = Field(default=None, gt=0)
    image_max_patches: int | None = Field(default=None, gt=0)
    image_max_tokens: int | None = Field(default=None, ge=0)
    aliases: list[str] | None = None


class RoutePolicy(BaseModel):
    """Which routes a workspace's items may take, and in what order."""

    model_config = _STRICT
    allowed_providers: list[str] | None = None
    denied_providers: list[str] = Field(default_factory=list)
    deny_training: bool = False
    zero_retention: bool = False
    max_input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    max_output_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    objective: Objective = "cost"
    max_fallbacks: int = Field(default=2, ge=0)
    # A model its provider retired: refuse the item naming the successor, or run it on the successor.
    retired_models: Literal["refuse", "successor"] = "refuse"
    # Card numbers and credentials are rejected (restricted_content) unless allowed: each kind by its
    # own key, or both by allow_restricted_content (the older key).
    allow_cards: bool = False
    allow_credentials: bool = False
    allow_restricted_content: bool = False

    @property
    def cards_allowed(self) -> bool:
        return self.allow_cards or self.allow_restricted_content

    @property
    def credentials_allowed(self) -> bool:
        return self.allow_credentials or self.allow_restricted_content


def _deadline(value: Any, field: str) -> Any:
    """A deadline as written (`24h`, `90m`, seconds) in seconds; `"none"`: no deadline (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    return parse_duration(value, field=field)


class WorkspaceConfig(BaseModel):
    """Per-workspace settings."""

    model_config = _STRICT
    policy: RoutePolicy = Field(default_factory=RoutePolicy)
    auto_approve_max_usd: Decimal | None = Field(default=None, ge=0)
    # Overrides lanes.default_deadline when written (`"none"`: no deadline here, whatever the default).
    default_deadline: float | None = None

    @field_validator("default_deadline", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _deadline(value, "default_deadline")

    @field_validator("auto_approve_max_usd", mode="before")
    @classmethod
    def _plain_amount(cls, value: Any) -> Any:
        # As written (before conversion, so `1e3` is still visible): the one rule for every amount.
        if value is not None:
            usd_to_micros(value, field="auto_approve_max_usd", allow_zero=True)
        return value


class LimitsConfig(BaseModel):
    """Hard limits on what one manifest may hold."""

    model_config = _STRICT
    max_rows: int = Field(default=2_000_000, gt=0)
    max_item_bytes: int = Field(default=1_048_576, gt=0)
    max_manifest_bytes: int = Field(default=4 * 1024**3, gt=0)
    # Decoded size: a Parquet file's uncompressed column data, and the text of every manifest.
    max_decoded_bytes: int = Field(default=8 * 1024**3, gt=0)


class DispatchConfig(BaseModel):
    """Dispatcher knobs shared by every route."""

    model_config = _STRICT
    max_attempts: int = Field(default=4, gt=0)
    stall_timeout_s: float = Field(default=60.0, gt=0)
    checkpoint_items: int = Field(default=500, gt=0)
    breaker_failures: int = Field(default=20, gt=0)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    stale_after_minutes: float = Field(default=30.0, gt=0)
    # A flex request refused for capacity is asked again on flex this many times (with the back-off above)
    # while its hedge time allows, then sent on at the standard tier.
    flex_retries: int = Field(default=4, ge=0)


class LanesConfig(BaseModel):
    """How the lanes are predicted and watched (`pricing.predictions`, the provider lane).

    Every duration here is on the provider's clock, in seconds; BatchRouter waits `wall_s(duration)`
    of real time for it, which is the same unless `time_scale` says the clock runs faster (simulations
    set it to `simulator.batch_time_scale`, so a 24h deadline passes in a wall minute at 1440).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    # Predictions are this percentile of measured completion times (`pricing.predictions`). The hedge
    # keeps the deadline whatever the lane does, so this sets how often a hedge is paid for (1 in 10).
    percentile: float = Field(default=0.9, gt=0, le=1)
    # A lane is chosen for a deadline only when its prediction plus this margin fits before it.
    margin_s: float = Field(default=600.0, ge=0)
    # A provider batch predicted late at the percentile is still tried, hedged online at its hedge time,
    # when the share of runs measured done by then saves at least this share of the online price.
    min_expected_saving: float = Field(default=0.2, gt=0, le=1)
    # Measured times replace the prior once this many observations exist (per provider, lane and size).
    min_observations: int = Field(default=20, ge=1)
    # A bet on a late-predicted batch (`min_expected_saving`) may read fewer: its downside is a hedge
    # at the online price, inside the reservation and the deadline, not a missed deadline.
    bet_min_observations: int = Field(default=5, ge=1)
    # A provider batch far behind the runs measured (stuck, most often) is cancelled and its unanswered
    # lines sent again in a fresh provider batch, still at the batch price, when a fresh one is at least
    # this much likelier (a share of runs) to be done before its hedge than the late one still is; at
    # most `max_resubmits` times per line, from `bet_min_observations` runs measured, as many of them
    # lasting twice the late one's age (`predictions.resubmit_share_gain`).
    resubmit_min_gain: float = Field(default=0.5, gt=0, le=1)
    max_resubmits: int = Field(default=2, ge=0)
    # A provider batch's own pace tells it stuck too, with no runs measured needed: its answered count rose,
    # then has not moved for `stall_factor` times as long as it took to get there, nor for `stall_min_s`;
    # it is resubmitted the same way while a fresh one is predicted done before its hedge.
    stall_factor: float = Field(default=3.0, ge=1)
    stall_min_s: float = Field(default=3600.0, ge=0)
    # A provider batch still validating this long after it was sent is stuck there (a provider validates a
    # file in minutes), and is resubmitted the same way.
    validating_max_s: float = Field(default=3600.0, gt=0)
    # Priors: a provider batch's completion at the percentile (published: most within an hour, 24h
    # windows, stuck tails), and how many times slower than online each flex request is.
    batch_prior_p95_s: float = Field(default=2 * 3600.0, gt=0)
    batch_prior_p95_s_per_provider: dict[str, float] = Field(default_factory=dict)
    flex_slowdown: float = Field(default=3.0, ge=1)
    # Provider batches are polled after poll_interval_s, then at twice the previous wait, up to poll_max_s.
    poll_interval_s: float = Field(default=30.0, gt=0)
    poll_max_s: float = Field(default=600.0, gt=0)
    time_scale: float = Field(default=1.0, gt=0)
    # When a batch's items are due when its manifest names no deadline (None: no deadline, online at once).
    default_deadline: float | None = None

    @field_validator("default_deadline", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _deadline(value, "default_deadline")

    @field_validator("batch_prior_p95_s_per_provider")
    @classmethod
    def _positive_priors(cls, value: dict[str, float]) -> dict[str, float]:
        for provider, seconds in value.items():
            if seconds <= 0:
                raise ValueError(f"{provider}: a prior must be a positive number of seconds, got {seconds}")
        return value

    @model_validator(mode="after")
    def _poll_order(self) -> LanesConfig:
        if self.poll_max_s < self.poll_interval_s:
            raise ValueError(f"poll_max_s ({self.poll_max_s:g}) must be at least poll_interval_s "
                             f"({self.poll_interval_s:g})")  # fmt: skip
        return self

    def cancel_wait_s(self) -> float:
        """How long before its hedge time a provider batch is asked to cancel: half the margin, so the
        cancel can end (and what it answered be kept) inside the slack, never taking from the hedge."""
        return self.margin_s / 2

    def batch_prior_s(self, provider: str) -> float:
        """The prior p95 completion time of `provider`'s batches, before enough are measured."""
        return self.batch_prior_p95_s_per_provider.get(provider, self.batch_prior_p95_s)

    def poll_delay_s(self, polls_done: int) -> float:
        """Provider seconds to wait before the next poll of a provider batch, after `polls_done` polls."""
        return min(self.poll_interval_s * 2.0 ** min(polls_done, 64), self.poll_max_s)

    def wall_s(self, provider_s: float) -> float:
        """Real seconds that pass while `provider_s` pass on the provider's (maybe faster) clock."""
        return provider_s / self.time_scale


BatchStuckState = Literal["validating", "in_progress", "finalizing"]


def _stuck_in_progress() -> list[BatchStuckState]:
    return ["in_progress"]


class SimulatorConfig(BaseModel):
    """How the built-in provider simulator behaves (`batchrouter simulate`, and providers of kind simulator)."""

    model_config = _STRICT
    latency_ms: float = Field(default=200.0, ge=0)
    latency_shape: Literal["fixed", "uniform", "lognormal"] = "uniform"
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    stall_rate: float = Field(default=0.0, ge=0, le=1)
    truncate_rate: float = Field(default=0.0, ge=0, le=1)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    trickle_rate: float = Field(default=0.0, ge=0, le=1)
    trickle_seconds: float = Field(default=3.0, ge=0)
    seed: int = 0
    max_output_words: int = Field(default=120, gt=8)
    # Simulated Claude tokenizer: o200k_base tokens x this ratio. Published comparisons put current Claude
    # tokenizers at about 1.0-1.35x o200k_base; tests raise it to the catalog's token_factor bound.
    anthropic_token_ratio: float = Field(default=1.2, ge=1.0, le=3.0)
    # How long a prompt prefix stays cached (OpenAI: 5-10 minutes of inactivity; Anthropic: 5 minutes).
    prompt_cache_ttl_s: float = Field(default=300.0, ge=0)
    # Provider batch APIs (OpenAI Batch, Anthropic Message Batches), on a clock `batch_time_scale` times faster
    # than the wall (1440: a day of provider time in a minute). Durations are in provider seconds.
    batch_time_scale: float = Field(default=1.0, gt=0)
    batch_validating_s: float = Field(default=20.0, ge=0)
    # Time to answer every line: log-normal around the median (published: ~7 min median, a tail past a day).
    batch_median_s: float = Field(default=420.0, gt=0)
    batch_sigma: float = Field(default=1.7, ge=0)
    batch_finalizing_s: float = Field(default=30.0, ge=0)
    batch_cancel_s: float = Field(default=60.0, ge=0)
    batch_window_s: float = Field(default=86_400.0, gt=0)
    # OpenAI's flex tier: each request this many times slower, and this share refused for capacity
    # (429, not billed; OpenAI's advice is to retry, or to go on at the standard tier).
    flex_latency_factor: float = Field(default=1.0, ge=1)
    flex_unavailable_rate: float = Field(default=0.0, ge=0, le=1)
    # Share of batches that stop moving in one of `batch_stuck_states` and never end on their own.
    batch_stuck_rate: float = Field(default=0.0, ge=0, le=1)
    batch_stuck_states: list[BatchStuckState] = Field(default_factory=_stuck_in_progress, min_length=1)
    # Limits: requests and bytes per batch (OpenAI 50,000 and 200 MB; Anthropic 100,000 and 256 MB), and
    # input tokens enqueued per model across OpenAI batches in flight (None: unlimited; per-model overrides).
    batch_max_requests: int | None = Field(default=None, gt=0)
    batch_max_bytes: int | None = Field(default=None, gt=0)
    batch_enqueued_tokens: int | None = Field(default=None, gt=0)
    batch_enqueued_tokens_per_model: dict[str, int] = Field(default_factory=dict)


class BillingConfig(BaseModel):
    """Stripe credit packs. Secrets are read from the environment variables named here."""

    model_config = _STRICT
    packs: dict[str, Decimal] = Field(
        default_factory=lambda: {"starter": Decimal(10), "team": Decimal(50), "scale": Decimal(200)}
    )
    currency: str = "usd"
    stripe_api_key_env: str = "STRIPE_SECRET_KEY"
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"
    api_base: str | None = None  # another Stripe API endpoint (a local fake in tests)
    success_url: str = "http://127.0.0.1:8080/billing/success?session_id={CHECKOUT_SESSION_ID}"
    cancel_url: str = "http://127.0.0.1:8080/billing/cancelled"
    tolerance_s: int = Field(default=300, gt=0)
    reconcile_lookback_hours: int = Field(default=72, gt=0)

    @field_validator("packs", mode="before")
    @classmethod
    def _plain_amounts(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, price in value.items():
                usd_to_micros(price, field=f"pack {name}: price")
        return value

    @field_validator("packs")
    @classmethod
    def _whole_cents(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for name, price in value.items():
            if price <= 0 or price * 100 != (price * 100).to_integral_value():
                raise ValueError(f"pack {name}: price {price} must be a positive amount in whole cents")
        return value


class ApiConfig(BaseModel):
    """`batchrouter serve`."""

    model_config = _STRICT
    host: str = "127.0.0.1"
    port: int = Field(default=8080, gt=0, lt=65536)
    base_url: str = "http://127.0.0.1:8080"  # how customers reach the API (signed links point here)
    executor: Literal["sensor", "inline"] = "sensor"  # who runs batches created through the API
    rate_limit_per_minute: int = Field(default=600, gt=0)
    rate_limit_burst: int = Field(default=30, gt=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)  # JSON bodies and the Stripe webhook: 413 past it
    max_upload_bytes: int = Field(default=256 * 1024**2, gt=0)  # a manifest posted to /v1/quotes (decoded)


class DeliveryConfig(BaseModel):
    """Signed artifact links and `batch.completed` webhooks (`output.links`, `output.delivery`)."""

    model_config = _STRICT
    api_base: str | None = None  # base URL of the API serving local-root links; default http://{api.host}:{api.port}
    link_secret_env: str = "BATCHROUTER_LINK_SECRET"  # unset: a development secret under <storage root>/.secrets/
    link_expires_s: int = Field(default=86_400, gt=0, le=604_800)  # S3 presigned URLs last at most 7 days
    retry_schedule_s: list[float] = Field(default_factory=lambda: [0.0, 5.0, 30.0, 120.0, 600.0, 1800.0])
    timeout_s: float = Field(default=10.0, gt=0)  # per webhook request
    max_total_s: float = Field(default=3600.0, gt=0)  # no attempt starts later than this after delivery began
    disable_after_failed_events: int = Field(default=5, gt=0)  # consecutive events that exhausted their retries
    allow_private_endpoints: bool = False  # local development only: loopback and private webhook URLs

    @field_validator("retry_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value or any(delay < 0 for delay in value):
            raise ValueError("needs at least one delay, none negative (seconds before each attempt)")
        return value


# Providers every installation knows. By default they all point at the built-in simulator, so nothing
# reaches a paid API until a config file says `kind = "openai"` (or another real kind) for it.
DEFAULT_PROVIDERS: dict[str, ProviderConfig] = {
    "openai": ProviderConfig(kind="simulator", wire="openai", api_key_env="OPENAI_API_KEY"),
    "anthropic": ProviderConfig(kind="simulator", wire="anthropic", api_key_env="ANTHROPIC_API_KEY"),
    "openrouter": ProviderConfig(kind="simulator", wire="openrouter", api_key_env="OPENROUTER_API_KEY"),
    "selfhosted": ProviderConfig(kind="simulator", wire="openai"),
}

_toml_path: ContextVar[Path | None] = ContextVar("batchrouter_toml_path", default=None)


class Settings(BaseSettings):
    """The whole configuration of one BatchRouter installation."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHROUTER_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: str = ".batchrouter/batchrouter.duckdb"
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(default_factory=list)
    workspaces: dict[str, WorkspaceConfig] = Field(default_factory=dict)  # keys: canonical workspace names
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    billing: BillingConfig = Field(default_factory=BillingConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    lanes: LanesConfig = Field(default_factory=LanesConfig)

    @field_validator("workspaces", mode="before")
    @classmethod
    def _canonical_workspaces(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for name, config in value.items():
            try:
                canonical = canonical_workspace(name)
            except IdentityError as exc:
                raise ValueError(exc.message) from exc
            if canonical in out:
                raise ValueError(f"workspaces {name!r} and another entry are the same workspace {canonical!r}")
            out[canonical] = config
        return out

    @field_validator("providers")
    @classmethod
    def _known_kinds(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name, provider in value.items():
            if provider.kind in ("openai_compatible",) and not provider.base_url:
                raise ValueError(f"providers.{name}: kind {provider.kind!r} needs base_url")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _toml_path.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def provider(self, name: str) -> ProviderConfig:
        """The configured provider `name`, falling back to the built-in default."""
        found = self.providers.get(name) or DEFAULT_PROVIDERS.get(name)
        if found is None:
            raise ConfigError(f"provider {name!r} is not configured; add a [providers.{name}] table to the config file")
        return found

    def provider_names(self) -> list[str]:
        return sorted(set(DEFAULT_PROVIDERS) | set(self.providers))

    def workspace(self, name: str) -> WorkspaceConfig:
        """The workspace's settings; unknown workspaces get the defaults."""
        try:
            name = canonical_workspace(name)
        except IdentityError:
            return WorkspaceConfig()
        return self.workspaces.get(name) or WorkspaceConfig()

    def deadline_s(self, workspace: str, own: float | None) -> float | None:
        """The deadline a batch of `workspace` runs under: its `own` (None: it named none; `ASAP`: none,
        online at once, whatever the default), else the workspace's default."""
        if own is None:
            return self.default_deadline_s(workspace)
        return None if own == ASAP else own

    def default_deadline_s(self, workspace: str) -> float | None:
        """Seconds a batch of `workspace` has when it names no deadline: the workspace's, else lanes'."""
        found = self.workspace(workspace)
        if "default_deadline" in found.model_fields_set:
            return found.default_deadline
        return self.lanes.default_deadline


def config_path_from_env() -> Path | None:
    """The config file named by `BATCHROUTER_CONFIG`, if any."""
    value = os.environ.get("BATCHROUTER_CONFIG")
    return Path(value) if value else None


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Load the TOML file (argument, else `BATCHROUTER_CONFIG`) with environment overrides applied.

    Raises:
        ConfigError: the file is missing or a value is invalid; the message names the key.
    """
    path = Path(config) if config is not None else config_path_from_env()
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with a readable TOML file")
    token = _toml_path.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = f"config file {path}" if path else "configuration"
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{where} is invalid: {problems}") from exc
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"config file {path} could not be parsed: {exc}") from exc
    finally:
        _toml_path.reset(token)
