"""Usage reporting: DuckDB views over the ledger and over the receipts Parquet in storage.

Views: `receipts`, `usage_daily`, `balances`, `ledger_entries`, `postings`, `batches`,
`quote_accuracy`, `platform_revenue`. Receipts are read where they are, through fsspec, so an
`s3://` root works without DuckDB's httpfs extension (which would be downloaded at first use).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from batchrouter.access.accounts import SCHEMA as ACCOUNTS_SCHEMA
from batchrouter.core import control, retry
from batchrouter.core.config import Settings
from batchrouter.core.errors import QueryError as QueryError
from batchrouter.core.identity import canonical_workspace
from batchrouter.core.storage import Storage
from batchrouter.execution.checkpoint import RESULT_SCHEMA
from batchrouter.money.ledger import SCHEMA as LEDGER_SCHEMA
from batchrouter.output.receipts import RECEIPT_COLUMNS

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


def _receipt_schema_sql() -> str:
    types = {"item_id": "VARCHAR", "batch_id": "VARCHAR", "workspace": "VARCHAR", "started_at": "TIMESTAMPTZ",
             "finished_at": "TIMESTAMPTZ"}  # fmt: skip
    for name, dtype in RESULT_SCHEMA.items():
        types.setdefault(name, "BIGINT" if dtype == pl.Int64 else "VARCHAR")
    return ", ".join(f"NULL::{types[c]} AS {c}" for c in RECEIPT_COLUMNS)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _glob(storage: Storage, con: duckdb.DuckDBPyConnection, *parts: str) -> str | None:
    pattern = storage.path(*parts)
    if not storage.fs.glob(pattern):
        return None
    if storage.protocol == "file":
        return pattern
    protocols = storage.fs.protocol
    name = protocols[0] if isinstance(protocols, tuple) else protocols
    if not con.filesystem_is_registered(name):  # receipts and quotes share one registration
        con.register_filesystem(storage.fs)
    return f"{storage.protocol}://{pattern}"


VIEWS = """
CREATE OR REPLACE VIEW usage_daily AS
SELECT workspace, CAST(date_trunc('day', finished_at) AS DATE) AS day, provider, model,
       count(*) AS items,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(input_tokens + output_tokens) AS tokens,
       sum(cost_usd_micros) AS cost_usd_micros
FROM receipts WHERE status IN ('succeeded', 'failed')
GROUP BY ALL;

CREATE OR REPLACE VIEW cost_reconciliation AS
SELECT workspace, provider, route, lane, cost_source,
       count(*) AS items,
       sum(cost_usd_micros) AS charged_usd_micros,
       sum(catalog_cost_usd_micros) AS catalog_usd_micros,
       sum(cost_usd_micros) - sum(catalog_cost_usd_micros) AS drift_usd_micros,
       (sum(cost_usd_micros) - sum(catalog_cost_usd_micros)) / nullif(sum(catalog_cost_usd_micros), 0) AS drift_share
FROM receipts WHERE status IN ('succeeded', 'failed') AND catalog_cost_usd_micros IS NOT NULL
GROUP BY ALL;

CREATE OR REPLACE VIEW ledger_entries AS
SELECT entry_id, created_at, op, workspace, batch_id, amount_usd_micros, memo, idempotency_key FROM ledger.journal;

CREATE OR REPLACE VIEW postings AS SELECT * FROM ledger.postings;

CREATE OR REPLACE VIEW balances AS
SELECT workspace, available_usd_micros, held_usd_micros, spent_usd_micros, credited_usd_micros,
       credited_usd_micros = available_usd_micros + held_usd_micros + spent_usd_micros AS balanced
FROM ledger.wallets;

CREATE OR REPLACE VIEW batches AS
SELECT batch_id, any_value(workspace) AS workspace,
       max(amount_usd_micros) FILTER (WHERE op = 'reserve') AS reserved_usd_micros,
       max(amount_usd_micros) FILTER (WHERE op = 'settle') AS captured_usd_micros,
       CASE WHEN bool_or(op = 'settle') THEN 'settled' WHEN bool_or(op = 'void') THEN 'voided'
            WHEN bool_or(op = 'expire') THEN 'expired' ELSE 'held' END AS hold_status,
       min(created_at) AS reserved_at,
       max(created_at) FILTER (WHERE op IN ('settle', 'void', 'expire')) AS resolved_at
FROM ledger.journal WHERE batch_id IS NOT NULL GROUP BY batch_id;

CREATE OR REPLACE VIEW platform_revenue AS
SELECT coalesce(sum(amount_usd_micros), 0) AS revenue_usd_micros FROM ledger.postings WHERE account LIKE '%:spent';
"""


@contextmanager
def connect(settings: Settings, *, lock_timeout_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the ledger attached read-only and every reporting view defined."""
    storage = Storage(settings.storage)
    con = duckdb.connect()
    # The control service owns the file: the views read a consistent snapshot of it (see control.readable_copy).
    ledger_copy = control.readable_copy(settings.database)
    try:
        _attach_ledger(con, ledger_copy.__enter__(), lock_timeout_s)
        receipts = _glob(storage, con, "batches", "*", "receipts.parquet")
        if receipts:
            # DDL takes no parameters: the path (from config, not from a query) is quoted as a literal.
            source = f"read_parquet({_literal(receipts)}, union_by_name = true)"
            # Receipts written before a column existed lack it: it reads as null.
            have = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
            missing = "".join(f", {part}" for part in _receipt_schema_sql().split(", ") if part.split()[-1] not in have)
            con.execute(f"CREATE VIEW receipts AS SELECT *{missing} FROM {source}")
        else:
            con.execute(f"CREATE VIEW receipts AS SELECT {_receipt_schema_sql()} WHERE false")
        quotes = _glob(storage, con, "batches", "*", "quote.parquet")
        if quotes:
            con.execute(
                "CREATE VIEW quote_items AS SELECT regexp_extract(filename, 'batches/([^/]+)/quote.parquet', 1) "
                f"AS batch_id, * EXCLUDE (filename) FROM read_parquet({_literal(quotes)}, filename = true, "
                "union_by_name = true)"
            )
        else:
            con.execute(
                "CREATE VIEW quote_items AS SELECT NULL::VARCHAR AS batch_id, NULL::VARCHAR AS model, "
                "NULL::VARCHAR AS status, NULL::BIGINT AS reserve_usd_micros, NULL::BIGINT AS expected_usd_micros "
                "WHERE false"
            )
        con.execute(VIEWS)
        if _has_table(con, "audit_events"):
            con.execute(
                "CREATE VIEW audit_events AS SELECT event_id, occurred_at, workspace, actor, action, target, "
                "before_json, after_json FROM ledger.audit_events"
            )
        else:
            con.execute(
                "CREATE VIEW audit_events AS SELECT NULL::VARCHAR AS event_id, NULL::TIMESTAMPTZ AS occurred_at, "
                "NULL::VARCHAR AS workspace, NULL::VARCHAR AS actor, NULL::VARCHAR AS action, NULL::VARCHAR AS target, "
                "NULL::VARCHAR AS before_json, NULL::VARCHAR AS after_json WHERE false"
            )
        con.execute("""
            CREATE OR REPLACE VIEW quote_accuracy AS
            WITH q AS (
                SELECT batch_id, model, count(*) AS items, sum(reserve_usd_micros) AS reserved_usd_micros,
                       sum(expected_usd_micros) AS expected_usd_micros
                FROM quote_items WHERE status = 'accepted' GROUP BY ALL),
            a AS (
                SELECT batch_id, model, sum(cost_usd_micros) AS actual_usd_micros
                FROM receipts WHERE status IN ('succeeded', 'failed') GROUP BY ALL)
            SELECT q.batch_id, q.model, q.items, q.reserved_usd_micros, q.expected_usd_micros,
                   coalesce(a.actual_usd_micros, 0) AS actual_usd_micros,
                   coalesce(a.actual_usd_micros, 0) / nullif(q.expected_usd_micros, 0) AS actual_over_expected,
                   coalesce(a.actual_usd_micros, 0) <= q.reserved_usd_micros AS within_reserve
            FROM q LEFT JOIN a USING (batch_id, model)
        """)
        yield con
    finally:
        con.close()
        ledger_copy.__exit__(None, None, None)


def _attach_ledger(con: duckdb.DuckDBPyConnection, path: str, lock_timeout_s: float) -> None:
    if not Path(path).exists():
        # No ledger yet: an empty one in memory, so the views still answer.
        con.execute("ATTACH ':memory:' AS ledger")
        con.execute("USE ledger")
        con.execute(LEDGER_SCHEMA)
        con.execute(ACCOUNTS_SCHEMA)
        con.execute("USE memory")
        return
    try:
        for attempt in retry.until(on=_locked, timeout_s=lock_timeout_s, first_s=0.05, max_s=0.05, factor=1.0):
            with attempt:
                con.execute("ATTACH ? AS ledger (READ_ONLY)", [path])
    except duckdb.IOException as exc:
        raise QueryError(f"the ledger {path} is locked by another process; try again") from exc


def _locked(exc: Exception) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'ledger' AND table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])


def check_read_only(sql: str) -> None:
    """Refuse anything but queries: `batchrouter sql` never changes data."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"the query does not parse: {exc}") from exc
    if not statements:
        raise QueryError("no SQL statement given")
    for statement in statements:
        kind = statement.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise QueryError(f"only read-only queries are allowed (SELECT, WITH, EXPLAIN); got {kind}")
        if kind == "EXPLAIN" and _explained_kind(statement.query) != "SELECT":
            # EXPLAIN ANALYZE runs the statement it explains: `EXPLAIN ANALYZE COPY ... TO 'file'` writes.
            raise QueryError("EXPLAIN is allowed for SELECT queries only")


_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\([^)]*\)\s*)?", re.IGNORECASE)


def _explained_kind(sql: str) -> str | None:
    """The statement type an EXPLAIN statement explains; None when that cannot be told (refused)."""
    inner, found = _EXPLAIN_PREFIX.subn("", sql, count=1)
    try:
        statements = duckdb.extract_statements(inner) if found else []
    except duckdb.Error:
        return None
    return statements[0].type.name if len(statements) == 1 else None


# What `batchrouter sql` may read: these views and nothing else (no API key hashes, webhook secrets or
# signing keys are in any of them).
PRODUCT_VIEWS = ("receipts", "quote_items", "usage_daily", "ledger_entries", "postings", "balances", "batches",
                 "audit_events", "quote_accuracy", "cost_reconciliation", "platform_revenue")  # fmt: skip
PLATFORM_ONLY_VIEWS = ("platform_revenue",)  # no meaning inside one workspace
_BATCH_DIGEST = 25  # "-" and the 24 hex digits after the workspace in a batch id (lifecycle.batch_id_for)


def _workspace_filter(con: duckdb.DuckDBPyConnection, view: str, workspace: str) -> str:
    """The condition that keeps one workspace's rows of a view."""
    # DDL takes no parameters: the name (canonical, so pattern-checked) is quoted as a literal.
    name = _literal(canonical_workspace(workspace))
    columns = {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}
    if "workspace" in columns:
        return f"workspace = {name}"
    # A batch id spells its workspace out in full before a fixed-length digest.
    return f"left(batch_id, greatest(length(batch_id) - {_BATCH_DIGEST}, 0)) = {name}"


@contextmanager
def restricted(settings: Settings, *, workspace: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A sealed in-memory database holding only the product's views, as tables (one workspace's rows if given).

    The views are copied into tables, then every other database (the ledger with its key hashes and
    secrets) is detached, and the connection can no longer reach any file, database or extension
    (`enable_external_access = false`) nor change a setting (`lock_configuration = true`).
    """
    with connect(settings) as con:
        kept = [v for v in PRODUCT_VIEWS if workspace is None or v not in PLATFORM_ONLY_VIEWS]
        for view in kept:
            sql = f"CREATE TABLE memory.main._sealed_{view} AS SELECT * FROM {view}"
            if workspace is not None:
                sql += f" WHERE {_workspace_filter(con, view, workspace)}"
            con.execute(sql)
        for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall():
            con.execute(f'DROP VIEW IF EXISTS "{name}"')
        for view in kept:
            con.execute(f"ALTER TABLE memory.main._sealed_{view} RENAME TO {view}")
        con.execute("USE memory")
        others = con.execute(
            "SELECT database_name FROM duckdb_databases() WHERE NOT internal AND database_name <> 'memory'"
        ).fetchall()
        for (name,) in others:
            con.execute(f'DETACH "{name}"')
        for setting in ("enable_external_access", "autoinstall_known_extensions", "autoload_known_extensions",
                        "allow_community_extensions", "python_enable_replacements"):  # fmt: skip
            con.execute(f"SET {setting} = false")
        con.execute("SET lock_configuration = true")
        yield con


def query(settings: Settings, sql: str, *, workspace: str | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a read-only query against the reporting views (of one workspace if given); (column names, rows)."""
    check_read_only(sql)
    with restricted(settings, workspace=workspace) as con:
        try:
            cur = con.execute(sql)
        except duckdb.Error as exc:
            raise QueryError(str(exc).splitlines()[0]) from exc
        return [d[0] for d in cur.description], cur.fetchall()


def usage_daily_for(settings: Settings, day: str) -> pl.DataFrame:
    """The `usage_daily` rows of one day (YYYY-MM-DD)."""
    with connect(settings) as con:
        cur = con.execute("SELECT * FROM usage_daily WHERE day = CAST(? AS DATE) ORDER BY ALL", [day])
        return pl.DataFrame(cur.to_arrow_table())


def write_usage_report(settings: Settings, storage: Storage, day: str) -> tuple[str, pl.DataFrame]:
    """Write one day's `usage_daily` rows to `reports/usage_daily/day=<day>/usage.parquet`."""
    frame = usage_daily_for(settings, day)
    url = storage.write_parquet(frame, "reports", "usage_daily", f"day={day}", "usage.parquet")
    return url, frame
