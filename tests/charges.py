"""What receipts say each line cost, checked against the catalog's prices.

A line's exact cost (`cost_usd_pico`) is the catalog's cost of its tokens at its lane's prices. What
it is charged (`cost_usd_micros`) is that cost rounded down or up to the micro-dollar: each checkpoint
chunk pays its exact total rounded up once (`batchrouter.core.amounts.charge_lines`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from batchrouter.core.catalog import Catalog

PICO_PER_MICRO = 10**6


Tier = Callable[[dict[str, Any]], str | None]


def assert_charged_by_catalog(catalog: Catalog, receipts: pl.DataFrame, tier: Tier) -> None:
    """Every row's exact cost is its tokens at `tier(row)`'s prices, and its charge within a micro-dollar of it
    (never above the exact cost rounded up, never above the row's reserve)."""
    assert receipts.height > 0
    for row in receipts.iter_rows(named=True):
        entry = catalog.entry(row["route"])
        exact = entry.cost_pico(row["input_tokens"], row["output_tokens"], cached=row["cached_tokens"] or 0,
                                tier=tier(row))  # fmt: skip
        assert row["cost_usd_pico"] == exact, row
        assert exact // PICO_PER_MICRO <= row["cost_usd_micros"] <= -(-exact // PICO_PER_MICRO), row
        assert row["reserve_usd_micros"] is None or row["cost_usd_micros"] <= row["reserve_usd_micros"], row
