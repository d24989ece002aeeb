"""The catalog's price source: pydantic's `genai-prices` database, read at the catalog's date.

The catalog file carries the prices (so a pinned catalog version never changes price under a quote);
this module says what the installed source says for each route, and where the two differ. It runs in
the catalog test and in `tools/catalog_prices.py`, never while quoting, so `genai-prices` is a
development dependency only.

Prices the source gives in tiers (a higher price once a request's input passes a threshold) are read
at their base tier; the catalog keeps such a route's context window at or below the first threshold,
so the base price is the only one a request can meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from genai_prices import types as gp_types
from genai_prices.data_snapshot import get_snapshot

from batchrouter.core.catalog import Catalog, CatalogEntry

# Our provider names -> the source's provider ids. Routes of other providers (self-hosted) have no price.
SOURCE_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "openrouter": "openrouter"}


@dataclass(frozen=True)
class SourcePrice:
    """What the source says for one route on one day, in USD per million tokens."""

    provider_id: str
    model_id: str
    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    batch_input: Decimal | None
    batch_output: Decimal | None
    # Only when the source's batch price names a cached price of its own.
    batch_cached_input: Decimal | None
    priority_input: Decimal | None
    priority_output: Decimal | None
    flex: bool
    # Input tokens from which a higher tier applies; None for flat prices.
    tier_start: int | None

    def matches(self, name: str) -> bool:
        """The source's model is the one `name` means (the source matches model names its own way)."""
        found = _model(self.provider_id, name)
        return found is not None and found.id == self.model_id


@dataclass(frozen=True)
class Drift:
    """One catalog field that disagrees with the source."""

    route: str
    field: str
    catalog: Decimal | int | bool | None
    source: Decimal | int | bool | None

    def __str__(self) -> str:
        return f"{self.route}: {self.field} is {self.catalog} in the catalog, {self.source} in genai-prices"


def _base(price: Decimal | gp_types.TieredPrices | None) -> tuple[Decimal | None, int | None]:
    if price is None:
        return None, None
    if isinstance(price, gp_types.TieredPrices):
        return price.base, min(t.start for t in price.tiers) if price.tiers else None
    return price, None


def _provider(provider_id: str) -> gp_types.Provider | None:
    for p in get_snapshot().providers:
        if p.id == provider_id:
            return p
    return None


def _model(provider_id: str, name: str) -> gp_types.ModelInfo | None:
    provider = _provider(provider_id)
    if provider is None:
        return None
    for model in provider.models:
        if model.is_match(name):
            return model
    return None


def source_price(provider: str, upstream: str, *, on: date) -> SourcePrice | None:
    """The source's prices for `upstream` on `provider` in force on `on`; None when the source has none."""
    provider_id = SOURCE_PROVIDERS.get(provider)
    if provider_id is None:
        return None
    model = _model(provider_id, upstream)
    if model is None:
        return None
    when = datetime(on.year, on.month, on.day, 12, tzinfo=UTC)
    standard = model.get_prices(when)
    batch = model.get_prices(when, {"processing": "batch"})
    priority = model.get_prices(when, {"service_tier": "priority"})
    flex = model.get_prices(when, {"service_tier": "flex"})
    tier_starts: list[int] = []

    def read(prices: gp_types.ModelPrice, key: str) -> Decimal | None:
        value, start = _base(getattr(prices, key))
        if start is not None:
            tier_starts.append(start)
        return value

    def variant(prices: gp_types.ModelPrice, key: str) -> Decimal | None:
        """A variant's own price for `key`, or None where it only inherits the standard one."""
        if getattr(prices, key) is getattr(standard, key):
            return None
        return read(prices, key)

    input_price = read(standard, "input_mtok")
    output_price = read(standard, "output_mtok")
    if input_price is None or output_price is None:
        return None
    if provider_id == "openrouter":
        # OpenRouter lists batch prices under a `:batch` model of their own; we do not route there.
        batch_input = batch_output = batch_cached = None
    else:
        batch_input = variant(batch, "input_mtok")
        batch_output = variant(batch, "output_mtok")
        batch_cached = variant(batch, "cache_read_mtok")
    return SourcePrice(
        provider_id=provider_id,
        model_id=model.id,
        input=input_price,
        output=output_price,
        cached_input=read(standard, "cache_read_mtok"),
        batch_input=batch_input,
        batch_output=batch_output,
        batch_cached_input=batch_cached,
        priority_input=variant(priority, "input_mtok"),
        priority_output=variant(priority, "output_mtok"),
        flex=variant(flex, "input_mtok") is not None,
        tier_start=min(tier_starts) if tier_starts else None,
    )


def catalog_date(catalog: Catalog) -> date:
    """The day a catalog's prices are read at: its version, `YYYY-MM-DD[+overrides]`."""
    return date.fromisoformat(catalog.version.split("+")[0])


def _discounted(price: Decimal | None, discount: Decimal) -> Decimal | None:
    return None if price is None else price * (1 - discount)


def entry_drift(entry: CatalogEntry, price: SourcePrice) -> list[Drift]:
    """Every price of `entry` that disagrees with `price` (exact decimal equality)."""
    checks: list[tuple[str, Decimal | int | bool | None, Decimal | int | bool | None]] = [
        ("input_usd_per_mtok", entry.input_usd_per_mtok, price.input),
        ("output_usd_per_mtok", entry.output_usd_per_mtok, price.output),
        ("cached_input_usd_per_mtok", entry.cached_input_usd_per_mtok, price.cached_input),
        ("priority_input_usd_per_mtok", entry.priority_input_usd_per_mtok, price.priority_input),
        ("priority_output_usd_per_mtok", entry.priority_output_usd_per_mtok, price.priority_output),
        ("flex", entry.flex, price.flex),
        ("batch input price", _discounted(entry.input_usd_per_mtok, entry.batch_discount), price.batch_input),
        ("batch output price", _discounted(entry.output_usd_per_mtok, entry.batch_discount), price.batch_output),
    ]
    if price.batch_input is None:
        # No batch price in the source: the catalog must not claim a discount.
        checks[-2] = ("batch_discount", entry.batch_discount, Decimal(0))
        checks.pop()
    if price.batch_cached_input is not None:
        checks.append(
            (
                "batch cached input price",
                _discounted(entry.cached_input_usd_per_mtok, entry.batch_discount),
                price.batch_cached_input,
            )
        )
    if price.tier_start is not None:
        checks.append(("context_window (at most the first price tier)", entry.context_window, price.tier_start))
    drifts = []
    for name, ours, theirs in checks:
        if name.startswith("context_window"):
            if isinstance(ours, int) and isinstance(theirs, int) and ours > theirs:
                drifts.append(Drift(entry.route, name, ours, theirs))
        elif ours != theirs:
            drifts.append(Drift(entry.route, name, ours, theirs))
    return drifts


def catalog_drift(catalog: Catalog) -> list[Drift]:
    """Every disagreement between the catalog and the installed source, at the catalog's date.

    A route of a priced provider that the source does not know is a drift too (`model`): the catalog
    must not carry prices nobody keeps.
    """
    on = catalog_date(catalog)
    drifts: list[Drift] = []
    for entry in catalog.entries:
        if entry.provider not in SOURCE_PROVIDERS:
            continue
        price = source_price(entry.provider, entry.upstream, on=on)
        if price is None:
            drifts.append(Drift(entry.route, "model", None, None))
            continue
        drifts.extend(entry_drift(entry, price))
    return drifts
