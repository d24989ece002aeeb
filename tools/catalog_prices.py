"""Compare the catalog's prices with the installed price source (genai-prices), or show the source's prices.

    python tools/catalog_prices.py                 # every drift between catalog.toml and the source; exit 1 if any
    python tools/catalog_prices.py openai gpt-5.2  # what the source says for one route, as catalog.toml keys
    python tools/catalog_prices.py openai gpt-5.2 2027-01-01   # ... on another day

Update catalog.toml by hand from the second form (keeping its comments), bump its `version` to the day the
prices are read at, and run the first form until it prints nothing.
"""

from __future__ import annotations

import sys
from datetime import date

from batchrouter.core.catalog import load_catalog
from batchrouter.pricing.price_source import catalog_date, catalog_drift, source_price


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3):
        on = date.fromisoformat(argv[2]) if len(argv) > 2 else catalog_date(load_catalog())
        price = source_price(argv[0], argv[1], on=on)
        if price is None:
            print(f"genai-prices has no price for {argv[1]!r} on {argv[0]!r}", file=sys.stderr)
            return 1
        print(f"# genai-prices model {price.model_id!r} on {on}")
        print(f"input_usd_per_mtok = {price.input}")
        print(f"output_usd_per_mtok = {price.output}")
        for key, value in [
            ("cached_input_usd_per_mtok", price.cached_input),
            ("priority_input_usd_per_mtok", price.priority_input),
            ("priority_output_usd_per_mtok", price.priority_output),
        ]:
            if value is not None:
                print(f"{key} = {value}")
        if price.batch_input is not None:
            print(f"batch_discount = {1 - price.batch_input / price.input}  # batch output {price.batch_output}")
        if price.flex:
            print("flex = true")
        if price.tier_start is not None:
            print(f"# tiered: keep context_window <= {price.tier_start}")
        return 0
    drifts = catalog_drift(load_catalog())
    for drift in drifts:
        print(drift)
    return 1 if drifts else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
