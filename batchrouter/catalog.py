"""The versioned model catalog: prices, limits, tokenizers and data-policy facts per route.

A catalog entry is one (model name, provider) pair; a model offered by several providers has several
entries, and each entry is one route. Prices are kept as integer pico-dollars per token
(= micro-dollars per million tokens), so quote arithmetic stays in integers.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import polars as pl

from batchrouter.config import ModelConfig, Tokenizer
from batchrouter.errors import CatalogError

PICO_PER_USD = 10**12
PICO_PER_MICRO = 10**6


def usd_per_mtok_to_pico_per_token(value: Decimal) -> int:
    """USD per million tokens -> integer pico-dollars per token; refuses sub-pico precision."""
    pico = Decimal(value) * PICO_PER_USD / 10**6
    if pico != pico.to_integral_value():
        raise CatalogError(f"price {value} USD/Mtok is finer than one pico-dollar per token")
    return int(pico)


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
    retention_days: int
    typical_latency_ms: int

    @property
    def route(self) -> str:
        """Stable route id, `provider:upstream`."""
        return f"{self.provider}:{self.upstream}"

    @property
    def input_pico_per_token(self) -> int:
        return usd_per_mtok_to_pico_per_token(self.input_usd_per_mtok)

    @property
    def output_pico_per_token(self) -> int:
        return usd_per_mtok_to_pico_per_token(self.output_usd_per_mtok)


_REQUIRED = (
    "upstream",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "context_window",
    "max_output_tokens",
    "tokenizer",
    "trains_on_inputs",
    "retention_days",
)


@dataclass(frozen=True)
class Catalog:
    """All routes known to an installation, with the version quotes record."""

    version: str
    entries: tuple[CatalogEntry, ...]

    def model_names(self) -> list[str]:
        return sorted({e.name for e in self.entries})

    def routes_for(self, model: str) -> list[CatalogEntry]:
        return [e for e in self.entries if e.name == model]

    def entry(self, route: str) -> CatalogEntry:
        for e in self.entries:
            if e.route == route:
                return e
        raise CatalogError(f"route {route!r} is not in catalog {self.version}")

    def models_frame(self) -> pl.DataFrame:
        """Per model name: the facts every route of the model shares for validation and counting.

        Where routes of one model differ, the most permissive limit and the most conservative
        tokenizer factor are taken; per-route limits are enforced again when routing.
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
                },
            )
            row["max_output_tokens"] = max(row["max_output_tokens"], e.max_output_tokens)
            row["default_max_tokens"] = max(row["default_max_tokens"], e.default_max_tokens)
            row["token_factor_milli"] = max(row["token_factor_milli"], int(e.token_factor * 1000))
            if row["tokenizer"] != e.tokenizer:
                row["tokenizer"] = "estimate"
        schema = {
            "model": pl.String,
            "tokenizer": pl.String,
            "token_factor_milli": pl.Int64,
            "max_output_tokens": pl.Int64,
            "default_max_tokens": pl.Int64,
            "expected_output_tokens": pl.Int64,
        }
        return pl.DataFrame(list(rows.values()), schema=schema)

    def routes_frame(self) -> pl.DataFrame:
        """One row per route with integer prices, for vectorised quoting and routing."""
        schema = {
            "model": pl.String,
            "route": pl.String,
            "provider": pl.String,
            "upstream": pl.String,
            "input_pico": pl.Int64,
            "output_pico": pl.Int64,
            "context_window": pl.Int64,
            "max_output_tokens": pl.Int64,
            "default_max_tokens": pl.Int64,
            "trains_on_inputs": pl.Boolean,
            "retention_days": pl.Int64,
            "typical_latency_ms": pl.Int64,
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
                    "context_window": e.context_window,
                    "max_output_tokens": e.max_output_tokens,
                    "default_max_tokens": e.default_max_tokens,
                    "trains_on_inputs": e.trains_on_inputs,
                    "retention_days": e.retention_days,
                    "typical_latency_ms": e.typical_latency_ms,
                }
                for e in self.entries
            ],
            schema=schema,
        )


def _builtin() -> dict[str, Any]:
    text = resources.files("batchrouter").joinpath("data/catalog.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_catalog(overrides: list[ModelConfig] | None = None) -> Catalog:
    """The built-in catalog with `[[models]]` overrides merged in by (name, provider).

    The version is the built-in version, plus a digest of the overrides when there are any, so a
    quote always names exactly the prices it used.
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
        fields = {**defaults, **raw}
        fields.setdefault("default_max_tokens", min(int(fields["max_output_tokens"]), 4096))
        entry = CatalogEntry(
            name=name,
            provider=provider,
            upstream=str(fields["upstream"]),
            input_usd_per_mtok=Decimal(str(fields["input_usd_per_mtok"])),
            output_usd_per_mtok=Decimal(str(fields["output_usd_per_mtok"])),
            batch_discount=Decimal(str(fields["batch_discount"])),
            context_window=int(fields["context_window"]),
            max_output_tokens=int(fields["max_output_tokens"]),
            default_max_tokens=min(int(fields["default_max_tokens"]), int(fields["max_output_tokens"])),
            expected_output_tokens=int(fields["expected_output_tokens"]),
            tokenizer=fields["tokenizer"],
            token_factor=Decimal(str(fields["token_factor"])),
            trains_on_inputs=bool(fields["trains_on_inputs"]),
            retention_days=int(fields["retention_days"]),
            typical_latency_ms=int(fields["typical_latency_ms"]),
        )
        if entry.tokenizer not in ("o200k_base", "cl100k_base", "estimate"):
            raise CatalogError(f"model {name!r}: unknown tokenizer {entry.tokenizer!r}")
        entry.input_pico_per_token  # noqa: B018 - validates price precision early
        entry.output_pico_per_token  # noqa: B018
        entries.append(entry)
    version = str(data["version"])
    if override_dump:
        digest = hashlib.sha256(json.dumps(override_dump, sort_keys=True).encode()).hexdigest()[:8]
        version = f"{version}+{digest}"
    return Catalog(version=version, entries=tuple(entries))


def entry_dict(entry: CatalogEntry) -> dict[str, Any]:
    """An entry as plain JSON-able values (prices as strings, exact)."""
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(entry).items()}
