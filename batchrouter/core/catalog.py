"""The versioned model catalog: prices, limits, tokenizers and data-policy facts per route.

A catalog entry is one (model name, provider) pair; a model offered by several providers has several
entries, and each entry is one route. Prices are kept as integer pico-dollars per token
(= micro-dollars per million tokens), so quote arithmetic stays in integers.

Prices come from the price source (`genai-prices`, see `batchrouter.pricing.price_source`): the TOML file holds
the source's figures for the catalog's date and a test keeps them equal. What the source does not carry
(data policy, tokenizer, limits, image rules, latency) is ours.

Model names as users write them: `Catalog.resolve` maps a catalog name or one of its dated snapshots
(`aliases`) to the catalog name; `Catalog.retired` maps a retired name to the catalog model that
replaces it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from functools import cached_property
from importlib import resources
from typing import Any, get_args

import polars as pl

from batchrouter.core.amounts import micros_up
from batchrouter.core.config import Endpoint, ImageRule, ModelConfig, Tokenizer
from batchrouter.core.errors import CatalogError

PICO_PER_USD = 10**12

# Where a route's data policy is not given, assume the worst: it may train on inputs, and it keeps them
# (retention unknown, never counted as zero), so `deny_training` and `zero_retention` exclude it.
UNKNOWN_TRAINS_ON_INPUTS = True


def usd_per_mtok_to_pico_per_token(value: Decimal) -> int:
    """USD per million tokens -> integer pico-dollars per token; refuses sub-pico precision."""
    pico = Decimal(value) * PICO_PER_USD / 10**6
    if pico != pico.to_integral_value():
        raise CatalogError(f"price {value} USD/Mtok is finer than one pico-dollar per token")
    return int(pico)


def normalise_model_name(name: str) -> str:
    """A model name as the catalog spells names: trimmed and lower-cased."""
    return name.strip().lower()


def _pico_or_none(value: Decimal | None) -> int | None:
    return None if value is None else usd_per_mtok_to_pico_per_token(value)


@dataclass(frozen=True)
class CatalogEntry:
    """One route: a model served by one provider under its upstream name."""

    name: str
    provider: str
    upstream: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    batch_discount: Decimal
    context_window: int
    max_output_tokens: int
    default_max_tokens: int
    expected_output_tokens: int
    tokenizer: Tokenizer
    token_factor: Decimal
    trains_on_inputs: bool
    # None: the provider's retention is unknown, treated as non-zero.
    retention_days: int | None
    typical_latency_ms: int
    # Price of input read from the provider's prompt cache; None when the provider sells none.
    cached_input_usd_per_mtok: Decimal | None = None
    # OpenAI `service_tier: "priority"` prices; None when the tier is not sold for the model.
    priority_input_usd_per_mtok: Decimal | None = None
    priority_output_usd_per_mtok: Decimal | None = None
    # OpenAI `service_tier: "flex"` is offered for the model.
    flex: bool = False
    # Reasoning tokens are billed as output, inside `max_completion_tokens`.
    reasoning: bool = False
    # Request kinds the route speaks.
    endpoints: tuple[Endpoint, ...] = ("chat",)
    # Image input pricing, see `batchrouter.intake.images`.
    image_rule: ImageRule = "none"
    image_base_tokens: int = 0
    image_tile_tokens: int = 0
    image_patch_multiplier: Decimal = Decimal(1)
    image_max_patches: int = 1536
    image_max_tokens: int = 0
    # Other names users write for this model (dated snapshots); the same on every route of the model.
    aliases: tuple[str, ...] = field(default=())

    @property
    def route(self) -> str:
        """Stable route id, `provider:upstream`."""
        return f"{self.provider}:{self.upstream}"

    def cost_micros(self, input_tokens: int, output_tokens: int, *, cached: int = 0, tier: str | None = None) -> int:
        """`cost_pico` rounded up to the micro-dollar: the most one answer is charged (`amounts.charge_lines`)."""
        return micros_up(self.cost_pico(input_tokens, output_tokens, cached=cached, tier=tier))

    def cost_pico(self, input_tokens: int, output_tokens: int, *, cached: int = 0, tier: str | None = None) -> int:
        """What the provider bills for one answer, by the catalog, exact in pico-dollars.

        Cached input at the cached price; `tier` "priority" at the priority prices; "flex" (where sold)
        and "batch" (a provider Batch API line) at the batch discount.
        """
        price_in, price_out = self.input_pico_per_token, self.output_pico_per_token
        price_cached = self.cached_input_pico_per_token
        if tier == "priority" and self.priority_input_pico_per_token and self.priority_output_pico_per_token:
            price_in, price_out = self.priority_input_pico_per_token, self.priority_output_pico_per_token
            price_cached = None
        cached = min(max(cached, 0), input_tokens) if price_cached is not None else 0
        pico = (input_tokens - cached) * price_in + cached * (price_cached or 0) + output_tokens * price_out
        if (tier == "flex" and self.flex) or tier == "batch":
            pico = pico * int((1 - self.batch_discount) * 1000) // 1000
        return pico

    @property
    def zero_retention(self) -> bool:
        """The provider is known to keep nothing."""
        return self.retention_days == 0

    # Prices in pico-dollars are read per dispatched item (`Route.cost_micros`): computed once per entry.
    @cached_property
    def input_pico_per_token(self) -> int:
        return usd_per_mtok_to_pico_per_token(self.input_usd_per_mtok)

    @cached_property
    def output_pico_per_token(self) -> int:
        return usd_per_mtok_to_pico_per_token(self.output_usd_per_mtok)

    @cached_property
    def cached_input_pico_per_token(self) -> int | None:
        return _pico_or_none(self.cached_input_usd_per_mtok)

    @cached_property
    def priority_input_pico_per_token(self) -> int | None:
        return _pico_or_none(self.priority_input_usd_per_mtok)

    @cached_property
    def priority_output_pico_per_token(self) -> int | None:
        return _pico_or_none(self.priority_output_usd_per_mtok)


_REQUIRED = (
    "upstream",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "context_window",
    "max_output_tokens",
    "tokenizer",
)


@dataclass(frozen=True)
class Catalog:
    """All routes known to an installation, with the version quotes record."""

    version: str
    entries: tuple[CatalogEntry, ...]
    # Retired model name (and its snapshots) -> the catalog model that replaces it.
    retired: dict[str, str] = field(default_factory=dict)

    def model_names(self) -> list[str]:
        return sorted({e.name for e in self.entries})

    def routes_for(self, model: str) -> list[CatalogEntry]:
        return [e for e in self.entries if e.name == model]

    def entry(self, route: str) -> CatalogEntry:
        for e in self.entries:
            if e.route == route:
                return e
        raise CatalogError(f"route {route!r} is not in catalog {self.version}")

    @cached_property
    def _names(self) -> dict[str, str]:
        names: dict[str, str] = {}
        for e in self.entries:
            names[e.name] = e.name
        for e in self.entries:
            for alias in e.aliases:
                names.setdefault(alias, e.name)
        return names

    def resolve(self, name: str) -> str | None:
        """The catalog model a user's model name means (itself, or the model of a snapshot), else None.

        Names match exactly, else trimmed and lower-cased. Retired names resolve to None: `successor`
        names their replacement.
        """
        return self._names.get(name, self._names.get(normalise_model_name(name)))

    def successor(self, name: str) -> str | None:
        """The catalog model replacing `name` when `name` is a retired model (or snapshot), else None."""
        return self.retired.get(name, self.retired.get(normalise_model_name(name)))

    def aliases_frame(self) -> pl.DataFrame:
        """Every name that resolves (`alias`) and its catalog model (`model`); catalog names map to themselves.

        Names are exact: join on `model` normalised like `normalise_model_name` (trimmed, lower-cased)
        to match what `resolve` matches.
        """
        return pl.DataFrame(
            {"alias": list(self._names), "model": list(self._names.values())},
            schema={"alias": pl.String, "model": pl.String},
        )

    def retired_frame(self) -> pl.DataFrame:
        """Every retired name (`alias`) and the catalog model replacing it (`successor`)."""
        return pl.DataFrame(
            {"alias": list(self.retired), "successor": list(self.retired.values())},
            schema={"alias": pl.String, "successor": pl.String},
        )

    def models_frame(self) -> pl.DataFrame:
        """Per model name: the facts every route of the model shares for validation and counting.

        Where routes of one model differ, the most permissive limit and the most conservative
        tokenizer factor are taken; per-route limits are enforced again when routing. `reasoning`
        is true if any route reasons; `endpoints` is every request kind some route speaks.
        """
        rows: dict[str, dict[str, Any]] = {}
        for e in self.entries:
            row = rows.setdefault(
                e.name,
                {
                    "model": e.name,
                    "tokenizer": e.tokenizer,
                    "token_factor_milli": int(e.token_factor * 1000),
                    "max_output_tokens": e.max_output_tokens,
                    "default_max_tokens": e.default_max_tokens,
                    "expected_output_tokens": e.expected_output_tokens,
                    "reasoning": e.reasoning,
                    "endpoints": list(e.endpoints),
                },
            )
            row["max_output_tokens"] = max(row["max_output_tokens"], e.max_output_tokens)
            row["default_max_tokens"] = max(row["default_max_tokens"], e.default_max_tokens)
            row["token_factor_milli"] = max(row["token_factor_milli"], int(e.token_factor * 1000))
            row["reasoning"] = row["reasoning"] or e.reasoning
            row["endpoints"] = sorted(set(row["endpoints"]) | set(e.endpoints))
            if row["tokenizer"] != e.tokenizer:
                row["tokenizer"] = "estimate"
        schema: dict[str, Any] = {
            "model": pl.String,
            "tokenizer": pl.String,
            "token_factor_milli": pl.Int64,
            "max_output_tokens": pl.Int64,
            "default_max_tokens": pl.Int64,
            "expected_output_tokens": pl.Int64,
            "reasoning": pl.Boolean,
            "endpoints": pl.List(pl.String),
        }
        return pl.DataFrame(list(rows.values()), schema=schema)

    def routes_frame(self) -> pl.DataFrame:
        """One row per route with integer prices, for vectorised quoting and routing.

        Optional prices are null where the route does not sell them (cached input, priority tier);
        `retention_days` is null where unknown.
        """
        schema: dict[str, Any] = {
            "model": pl.String,
            "route": pl.String,
            "provider": pl.String,
            "upstream": pl.String,
            "input_pico": pl.Int64,
            "output_pico": pl.Int64,
            "cached_input_pico": pl.Int64,
            "priority_input_pico": pl.Int64,
            "priority_output_pico": pl.Int64,
            "flex": pl.Boolean,
            "reasoning": pl.Boolean,
            "endpoints": pl.List(pl.String),
            "context_window": pl.Int64,
            "max_output_tokens": pl.Int64,
            "default_max_tokens": pl.Int64,
            "trains_on_inputs": pl.Boolean,
            "retention_days": pl.Int64,
            "typical_latency_ms": pl.Int64,
            "image_rule": pl.String,
            "image_base_tokens": pl.Int64,
            "image_tile_tokens": pl.Int64,
            "image_patch_multiplier_milli": pl.Int64,
            "image_max_patches": pl.Int64,
            "image_max_tokens": pl.Int64,
        }
        return pl.DataFrame(
            [
                {
                    "model": e.name,
                    "route": e.route,
                    "provider": e.provider,
                    "upstream": e.upstream,
                    "input_pico": e.input_pico_per_token,
                    "output_pico": e.output_pico_per_token,
                    "cached_input_pico": e.cached_input_pico_per_token,
                    "priority_input_pico": e.priority_input_pico_per_token,
                    "priority_output_pico": e.priority_output_pico_per_token,
                    "flex": e.flex,
                    "reasoning": e.reasoning,
                    "endpoints": list(e.endpoints),
                    "context_window": e.context_window,
                    "max_output_tokens": e.max_output_tokens,
                    "default_max_tokens": e.default_max_tokens,
                    "trains_on_inputs": e.trains_on_inputs,
                    "retention_days": e.retention_days,
                    "typical_latency_ms": e.typical_latency_ms,
                    "image_rule": e.image_rule,
                    "image_base_tokens": e.image_base_tokens,
                    "image_tile_tokens": e.image_tile_tokens,
                    "image_patch_multiplier_milli": int(e.image_patch_multiplier * 1000),
                    "image_max_patches": e.image_max_patches,
                    "image_max_tokens": e.image_max_tokens,
                }
                for e in self.entries
            ],
            schema=schema,
        )


def _builtin() -> dict[str, Any]:
    text = resources.files("batchrouter").joinpath("data/catalog.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value))


def _entry(name: str, provider: str, fields: dict[str, Any]) -> CatalogEntry:
    where = f"model {name!r} on provider {provider!r}"
    max_output = int(fields["max_output_tokens"])
    fields.setdefault("default_max_tokens", min(max_output, 4096))
    trains = fields.get("trains_on_inputs")
    retention = fields.get("retention_days")
    endpoints = tuple(fields.get("endpoints", ("chat",)))
    for kind in endpoints:
        if kind not in get_args(Endpoint):
            raise CatalogError(f"{where}: unknown endpoint {kind!r}; use one of {', '.join(get_args(Endpoint))}")
    image_rule = fields.get("image_rule", "none")
    if image_rule not in get_args(ImageRule):
        raise CatalogError(f"{where}: unknown image_rule {image_rule!r}; use one of {', '.join(get_args(ImageRule))}")

    def price(key: str) -> Decimal | None:
        return None if fields.get(key) is None else _decimal(fields[key])

    entry = CatalogEntry(
        name=name,
        provider=provider,
        upstream=str(fields["upstream"]),
        input_usd_per_mtok=_decimal(fields["input_usd_per_mtok"]),
        output_usd_per_mtok=_decimal(fields["output_usd_per_mtok"]),
        batch_discount=_decimal(fields["batch_discount"]),
        context_window=int(fields["context_window"]),
        max_output_tokens=max_output,
        default_max_tokens=min(int(fields["default_max_tokens"]), max_output),
        expected_output_tokens=int(fields["expected_output_tokens"]),
        tokenizer=fields["tokenizer"],
        token_factor=_decimal(fields["token_factor"]),
        trains_on_inputs=UNKNOWN_TRAINS_ON_INPUTS if trains is None else bool(trains),
        retention_days=None if retention is None else int(retention),
        typical_latency_ms=int(fields["typical_latency_ms"]),
        flex=bool(fields.get("flex", False)),
        reasoning=bool(fields.get("reasoning", False)),
        endpoints=endpoints,
        cached_input_usd_per_mtok=price("cached_input_usd_per_mtok"),
        priority_input_usd_per_mtok=price("priority_input_usd_per_mtok"),
        priority_output_usd_per_mtok=price("priority_output_usd_per_mtok"),
        image_rule=image_rule,
        image_base_tokens=int(fields.get("image_base_tokens", 0)),
        image_tile_tokens=int(fields.get("image_tile_tokens", 0)),
        image_patch_multiplier=_decimal(fields.get("image_patch_multiplier", 1)),
        image_max_patches=int(fields.get("image_max_patches", 1536)),
        image_max_tokens=int(fields.get("image_max_tokens", 0)),
        aliases=tuple(str(a) for a in fields.get("aliases", ())),
    )
    if entry.tokenizer not in get_args(Tokenizer):
        raise CatalogError(f"{where}: unknown tokenizer {entry.tokenizer!r}")
    if entry.image_rule == "tile" and (entry.image_base_tokens <= 0 or entry.image_tile_tokens <= 0):
        raise CatalogError(f"{where}: image_rule 'tile' needs image_base_tokens and image_tile_tokens above 0")
    if entry.image_rule == "area" and entry.image_max_tokens <= 0:
        raise CatalogError(f"{where}: image_rule 'area' needs image_max_tokens above 0")
    for value in (
        entry.input_usd_per_mtok,
        entry.output_usd_per_mtok,
        entry.cached_input_usd_per_mtok,
        entry.priority_input_usd_per_mtok,
        entry.priority_output_usd_per_mtok,
    ):
        if value is not None:
            usd_per_mtok_to_pico_per_token(value)  # validates precision early
    return entry


def load_catalog(overrides: list[ModelConfig] | None = None) -> Catalog:
    """The built-in catalog with `[[models]]` overrides merged in by (name, provider).

    The version is the built-in version, plus a digest of the overrides when there are any, so a
    quote always names exactly the prices it used. A new model that leaves out its data policy is
    assumed to train on inputs and to retain them.
    """
    data = _builtin()
    defaults: dict[str, Any] = data.get("defaults", {})
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in data["models"]:
        merged[(raw["name"], raw["provider"])] = dict(raw)
    override_dump = []
    for model in overrides or []:
        given = model.model_dump(exclude_none=True)
        override_dump.append({k: str(v) for k, v in sorted(given.items())})
        key = (model.name, model.provider)
        merged[key] = {**merged.get(key, {}), **given}
    entries = []
    for (name, provider), raw in sorted(merged.items()):
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise CatalogError(
                f"model {name!r} on provider {provider!r} is missing {', '.join(missing)}; "
                "a new [[models]] entry must give every one of them"
            )
        entries.append(_entry(name, provider, {**defaults, **raw}))
    names = {e.name for e in entries}
    # A name the installation serves (a [[models]] entry) is no longer retired for it.
    retired = {old: str(new) for old, new in data.get("retired", {}).items() if old not in names}
    _check_names(entries, retired)
    version = str(data["version"])
    if override_dump:
        digest = hashlib.sha256(json.dumps(override_dump, sort_keys=True).encode()).hexdigest()[:8]
        version = f"{version}+{digest}"
    return Catalog(version=version, entries=tuple(entries), retired=retired)


def _check_names(entries: list[CatalogEntry], retired: dict[str, str]) -> None:
    """Every alias names one model, no alias is retired, and every successor is a catalog model."""
    names = {e.name for e in entries}
    owner: dict[str, str] = {}
    for e in entries:
        for alias in e.aliases:
            if alias in names and alias != e.name:
                raise CatalogError(f"alias {alias!r} of model {e.name!r} is itself a catalog model")
            if owner.setdefault(alias, e.name) != e.name:
                raise CatalogError(f"alias {alias!r} is given to both {owner[alias]!r} and {e.name!r}")
    for old, new in retired.items():
        if old in owner:
            raise CatalogError(f"retired model {old!r} is also an alias of {owner[old]!r}")
        if new not in names:
            raise CatalogError(f"retired model {old!r} names successor {new!r}, which is not in the catalog")


def entry_dict(entry: CatalogEntry) -> dict[str, Any]:
    """An entry as plain JSON-able values (prices as strings, exact)."""
    return {
        k: (str(v) if isinstance(v, Decimal) else list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(entry).items()
    }
