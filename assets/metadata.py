"""Metadata people read in the Dagster UI: dollars as "$1.234567" and tables with a schema."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from batchrouter.money.ledger import usd

__all__ = ["table", "usd"]

_TYPES = {str: "string", int: "int", float: "float", bool: "bool"}


def table(rows: Iterable[Mapping[str, Any]], columns: Mapping[str, type]) -> dg.MetadataValue:
    """A table of `rows` with `columns` (name -> str/int/float/bool); values the UI shows as they are."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, _TYPES[kind]) for name, kind in columns.items()])
    records = [dg.TableRecord({name: row.get(name) for name in columns}) for row in rows]
    return dg.MetadataValue.table(records, schema=schema)
