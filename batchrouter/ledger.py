"""The credit ledger: double-entry, append-only, in integer micro-dollars, in one DuckDB file.

Accounts (signed balances, every journal entry's postings sum to zero):

    workspace:<W>:available   credit the workspace can spend
    workspace:<W>:held        credit reserved for batches not yet settled
    workspace:<W>:spent       credit consumed (the platform's revenue from W)
    platform:promotions       counter-account of granted credit
    platform:stripe_receivable  counter-account of purchased credit
    platform:revenue          (the sum of every workspace's spent account; a view, not postings)

Operations, each idempotent by key (same key and body: the same entry back; same key, different
body: `IdempotencyConflict`): `grant`, `purchase`, `reserve`, `settle`, `void`, `expire`.
Corrections are new entries; nothing is updated or deleted in `journal` and `postings`.

Concurrency: DuckDB lets one process open the file at a time, so every operation opens the file,
runs one transaction and closes it, retrying with jittered back-off while another process holds
the lock. Within the transaction, the workspace's row in `wallets` (the balances the journal
replays to, kept for speed) is updated: two transactions that both read a balance and spend it
conflict on that row, and the loser retries against the new balance. So no interleaving of
processes or threads can take more than the balance, and none loses its operation to a lock.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from batchrouter.control import served
from batchrouter.db import Database
from batchrouter.errors import BatchRouterError

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    entry_id VARCHAR PRIMARY KEY,
    idempotency_key VARCHAR NOT NULL UNIQUE,
    op VARCHAR NOT NULL,
    workspace VARCHAR NOT NULL,
    batch_id VARCHAR,
    amount_usd_micros BIGINT NOT NULL,
    body_sha256 VARCHAR NOT NULL,
    memo VARCHAR,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS postings (
    entry_id VARCHAR NOT NULL,
    account VARCHAR NOT NULL,
    workspace VARCHAR NOT NULL,
    amount_usd_micros BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS wallets (
    workspace VARCHAR PRIMARY KEY,
    available_usd_micros BIGINT NOT NULL,
    held_usd_micros BIGINT NOT NULL,
    spent_usd_micros BIGINT NOT NULL,
    credited_usd_micros BIGINT NOT NULL,
    version BIGINT NOT NULL
);
"""

OPS = ("grant", "purchase", "reserve", "settle", "void", "expire")


class LedgerError(BatchRouterError):
    """A ledger operation was refused."""

    code = "ledger_error"


class InsufficientCredits(LedgerError):
    code = "insufficient_credits"

    def __init__(self, workspace: str, needed: int, available: int) -> None:
        self.workspace, self.needed, self.available = workspace, needed, available
        self.missing = needed - available
        super().__init__(
            f"workspace {workspace} needs {usd(needed)} but has {usd(available)} available: "
            f"{usd(self.missing)} missing; buy credits (batchrouter credits buy) or lower the batch's max_tokens"
        )


class IdempotencyConflict(LedgerError):
    code = "idempotency_conflict"


class HoldError(LedgerError):
    code = "hold_error"


def usd(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    return f"{sign}${micros // 10**6:,}.{micros % 10**6:06d}"


def account(workspace: str, kind: str) -> str:
    return f"workspace:{workspace}:{kind}"


@dataclass(frozen=True)
class Entry:
    """One journal entry as an operation returns it."""

    entry_id: str
    idempotency_key: str
    op: str
    workspace: str
    batch_id: str | None
    amount_usd_micros: int
    memo: str | None
    created_at: datetime
    replayed: bool = False  # True when the key had been used already and this is the original entry


@dataclass(frozen=True)
class Balance:
    workspace: str
    available_usd_micros: int
    held_usd_micros: int
    spent_usd_micros: int
    credited_usd_micros: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace,
            "available_usd_micros": self.available_usd_micros,
            "held_usd_micros": self.held_usd_micros,
            "spent_usd_micros": self.spent_usd_micros,
            "credited_usd_micros": self.credited_usd_micros,
            "balanced": self.credited_usd_micros
            == self.available_usd_micros + self.held_usd_micros + self.spent_usd_micros,
        }


@dataclass(frozen=True)
class Hold:
    batch_id: str
    workspace: str
    amount_usd_micros: int
    created_at: datetime
    status: str  # held | settled | voided | expired
    captured_usd_micros: int


class Ledger:
    """The ledger in the DuckDB file at `path`."""

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 60.0) -> None:
        self.path = str(path)
        self.db = Database(self.path, schema=SCHEMA, lock_timeout_s=lock_timeout_s)

    def _connect(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return self.db.connect()

    def _transaction(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """One transaction; write conflicts and lock contention are retried (see `db.Database`)."""
        return self.db.transaction(work)

    # -- reads -------------------------------------------------------------------------------
    @served(read_only=True)
    def balance(self, workspace: str) -> Balance:
        with self._connect() as con:
            row = con.execute(
                "SELECT available_usd_micros, held_usd_micros, spent_usd_micros, credited_usd_micros "
                "FROM wallets WHERE workspace = ?",
                [workspace],
            ).fetchone()
        return Balance(workspace, *(int(v) for v in row)) if row else Balance(workspace, 0, 0, 0, 0)

    @served(read_only=True)
    def history(self, workspace: str) -> list[dict[str, Any]]:
        with self._connect() as con:
            cur = con.execute(
                "SELECT created_at, op, batch_id, amount_usd_micros, memo, idempotency_key, entry_id "
                "FROM journal WHERE workspace = ? ORDER BY created_at, entry_id",
                [workspace],
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    @served(read_only=True)
    def hold(self, batch_id: str) -> Hold | None:
        with self._connect() as con:
            return _hold(con, batch_id)

    @served(read_only=True)
    def holds(self, *, status: str | None = None) -> list[Hold]:
        with self._connect() as con:
            ids = [r[0] for r in con.execute("SELECT DISTINCT batch_id FROM journal WHERE op = 'reserve'").fetchall()]
            found = [h for h in (_hold(con, b) for b in ids) if h is not None]
        return [h for h in found if status is None or h.status == status]

    @served(read_only=True)
    def batch_holds(self, batch_id: str) -> list[Hold]:
        """The holds of a batch, one per dispatch round, oldest first (`<batch>`, `<batch>~r1`, ...)."""
        with self._connect() as con:
            ids = [
                r[0]
                for r in con.execute(
                    "SELECT batch_id FROM journal WHERE op = 'reserve' AND (batch_id = ? OR starts_with(batch_id, ?)) "
                    "ORDER BY created_at",
                    [batch_id, f"{batch_id}~r"],
                ).fetchall()
            ]
            found = [_hold(con, b) for b in ids]
        return [h for h in found if h is not None]

    def stale_holds(self, older_than: timedelta) -> list[Hold]:
        cutoff = datetime.now(UTC) - older_than
        return [h for h in self.holds(status="held") if h.created_at < cutoff]

    # -- operations --------------------------------------------------------------------------
    @served()
    def grant(self, workspace: str, amount_usd_micros: int, *, key: str, memo: str | None = None) -> Entry:
        """Promotional credit."""
        _positive(amount_usd_micros)
        return self._credit("grant", "platform:promotions", workspace, amount_usd_micros, key=key, memo=memo)

    @served()
    def purchase(self, workspace: str, amount_usd_micros: int, *, key: str, memo: str | None = None) -> Entry:
        """Credit bought through Stripe; `key` is the Checkout Session id."""
        _positive(amount_usd_micros)
        return self._credit("purchase", "platform:stripe_receivable", workspace, amount_usd_micros, key=key, memo=memo)

    def _credit(self, op: str, source: str, workspace: str, amount: int, *, key: str, memo: str | None) -> Entry:
        body = {"op": op, "workspace": workspace, "amount": amount}

        def work(con: duckdb.DuckDBPyConnection) -> Entry:
            found = _replay(con, key, body)
            if found:
                return found
            _wallet_update(con, workspace, available=amount, credited=amount)
            return _append(
                con,
                op,
                key,
                body,
                workspace,
                None,
                amount,
                memo,
                [(source, "platform", -amount), (account(workspace, "available"), workspace, amount)],
            )

        return self._transaction(work)

    @served()
    def reserve(self, workspace: str, batch_id: str, amount_usd_micros: int) -> Entry:
        """Hold `amount` for `batch_id`; refuses (writing nothing) when less is available."""
        if amount_usd_micros < 0:
            raise LedgerError("a reservation cannot be negative")
        key = f"reserve:{batch_id}"
        body = {"op": "reserve", "workspace": workspace, "batch_id": batch_id, "amount": amount_usd_micros}

        def work(con: duckdb.DuckDBPyConnection) -> Entry:
            found = _replay(con, key, body)
            if found:
                return found
            available = _available(con, workspace)
            if available < amount_usd_micros:
                raise InsufficientCredits(workspace, amount_usd_micros, available)
            _wallet_update(con, workspace, available=-amount_usd_micros, held=amount_usd_micros)
            return _append(con, "reserve", key, body, workspace, batch_id, amount_usd_micros, None, [
                (account(workspace, "available"), workspace, -amount_usd_micros),
                (account(workspace, "held"), workspace, amount_usd_micros),
            ])  # fmt: skip

        return self._transaction(work)

    @served()
    def settle(self, batch_id: str, actual_usd_micros: int) -> Entry:
        """Capture the actual cost (at most the hold) and release the rest, exactly once."""
        if actual_usd_micros < 0:
            raise LedgerError("an actual cost cannot be negative")
        key = f"settle:{batch_id}"
        body = {"op": "settle", "batch_id": batch_id, "actual": actual_usd_micros}

        def work(con: duckdb.DuckDBPyConnection) -> Entry:
            found = _replay(con, key, body)
            if found:
                return found
            hold = _open_hold(con, batch_id)
            captured = min(actual_usd_micros, hold.amount_usd_micros)
            release = hold.amount_usd_micros - captured
            memo = None
            if actual_usd_micros > hold.amount_usd_micros:
                memo = f"actual {usd(actual_usd_micros)} exceeded the reservation; captured the reservation only"
            ws = hold.workspace
            _wallet_update(con, ws, available=release, held=-hold.amount_usd_micros, spent=captured)
            return _append(con, "settle", key, body, ws, batch_id, captured, memo, [
                (account(ws, "held"), ws, -hold.amount_usd_micros),
                (account(ws, "available"), ws, release),
                (account(ws, "spent"), ws, captured),
            ])  # fmt: skip

        return self._transaction(work)

    @served()
    def void(self, batch_id: str, *, reason: str = "voided") -> Entry:
        """Release the whole hold (batch cancelled or never dispatched)."""
        return self._release("void", batch_id, reason)

    @served()
    def expire(self, batch_id: str, *, reason: str = "expired") -> Entry:
        """Release the hold of a batch whose run died."""
        return self._release("expire", batch_id, reason)

    def _release(self, op: str, batch_id: str, reason: str) -> Entry:
        key = f"{op}:{batch_id}"
        body = {"op": op, "batch_id": batch_id}

        def work(con: duckdb.DuckDBPyConnection) -> Entry:
            found = _replay(con, key, body)
            if found:
                return found
            hold = _open_hold(con, batch_id)
            ws, amount = hold.workspace, hold.amount_usd_micros
            _wallet_update(con, ws, available=amount, held=-amount)
            return _append(con, op, key, body, ws, batch_id, amount, reason, [
                (account(ws, "held"), ws, -amount),
                (account(ws, "available"), ws, amount),
            ])  # fmt: skip

        return self._transaction(work)

    # -- proof -------------------------------------------------------------------------------
    @served(read_only=True)
    def verify(self) -> dict[str, Any]:
        """Replay the journal and compare: balanced entries, wallets = replay, no overdraft, holds resolved once."""
        problems: list[str] = []
        with self._connect() as con:
            unbalanced = con.execute(
                "SELECT j.entry_id, coalesce(sum(p.amount_usd_micros), 0) FROM journal j "
                "LEFT JOIN postings p USING (entry_id) GROUP BY j.entry_id "
                "HAVING coalesce(sum(p.amount_usd_micros), 0) <> 0"
            ).fetchall()
            problems += [f"entry {e} does not balance (sum {s})" for e, s in unbalanced]
            replay = {
                (w, kind): int(total)
                for w, kind, total in con.execute(
                    "SELECT workspace, split_part(account, ':', 3), sum(amount_usd_micros) FROM postings "
                    "WHERE account LIKE 'workspace:%' GROUP BY ALL"
                ).fetchall()
            }
            credited = {
                w: int(t)
                for w, t in con.execute(
                    "SELECT workspace, sum(amount_usd_micros) FROM journal "
                    "WHERE op IN ('grant', 'purchase') GROUP BY ALL"
                ).fetchall()
            }
            wallets = con.execute(
                "SELECT workspace, available_usd_micros, held_usd_micros, spent_usd_micros, credited_usd_micros "
                "FROM wallets"
            ).fetchall()
            for w, available, held, spent, cred in wallets:
                expected = (replay.get((w, "available"), 0), replay.get((w, "held"), 0),
                            replay.get((w, "spent"), 0), credited.get(w, 0))  # fmt: skip
                if (available, held, spent, cred) != expected:
                    problems.append(f"workspace {w}: wallet {(available, held, spent, cred)} != replay {expected}")
                if cred != available + held + spent:
                    problems.append(f"workspace {w}: credited {cred} != available + held + spent")
            running = con.execute(
                "SELECT workspace, min(running) FROM (SELECT p.workspace, sum(p.amount_usd_micros) OVER ("
                "PARTITION BY p.workspace ORDER BY j.created_at, j.entry_id) AS running FROM postings p "
                "JOIN journal j USING (entry_id) WHERE p.account LIKE '%:available') GROUP BY ALL"
            ).fetchall()
            problems += [f"workspace {w}: available went below zero ({m})" for w, m in running if m < 0]
            multi = con.execute(
                "SELECT batch_id, count(*) FROM journal WHERE op IN ('settle', 'void', 'expire') "
                "GROUP BY batch_id HAVING count(*) > 1"
            ).fetchall()
            problems += [f"batch {b}: hold resolved {n} times" for b, n in multi]
            entries = con.execute("SELECT count(*) FROM journal").fetchone()
        return {"ok": not problems, "entries": int(entries[0]) if entries else 0, "workspaces": len(wallets),
                "problems": problems}  # fmt: skip


def _positive(amount: int) -> None:
    if not isinstance(amount, int) or amount <= 0:
        raise LedgerError(f"amount must be a positive whole number of micro-dollars, got {amount!r}")


def _body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _replay(con: duckdb.DuckDBPyConnection, key: str, body: dict[str, Any]) -> Entry | None:
    row = con.execute(
        "SELECT entry_id, idempotency_key, op, workspace, batch_id, amount_usd_micros, memo, created_at, body_sha256 "
        "FROM journal WHERE idempotency_key = ?",
        [key],
    ).fetchone()
    if row is None:
        return None
    if row[8] != _body_hash(body):
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a different {row[2]} ({row[5]} micro-USD on {row[3]}); "
            "use a new key for a new operation"
        )
    return Entry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], replayed=True)


def _available(con: duckdb.DuckDBPyConnection, workspace: str) -> int:
    row = con.execute("SELECT available_usd_micros FROM wallets WHERE workspace = ?", [workspace]).fetchone()
    return int(row[0]) if row else 0


def _wallet_update(
    con: duckdb.DuckDBPyConnection,
    workspace: str,
    *,
    available: int = 0,
    held: int = 0,
    spent: int = 0,
    credited: int = 0,
) -> None:
    # The single row every operation of a workspace writes: the conflict point that serialises them.
    con.execute("INSERT INTO wallets VALUES (?, 0, 0, 0, 0, 0) ON CONFLICT (workspace) DO NOTHING", [workspace])
    con.execute(
        "UPDATE wallets SET available_usd_micros = available_usd_micros + ?, held_usd_micros = held_usd_micros + ?, "
        "spent_usd_micros = spent_usd_micros + ?, credited_usd_micros = credited_usd_micros + ?, version = version + 1 "
        "WHERE workspace = ?",
        [available, held, spent, credited, workspace],
    )
    row = con.execute("SELECT available_usd_micros FROM wallets WHERE workspace = ?", [workspace]).fetchone()
    if row is None or row[0] < 0:
        raise LedgerError(f"workspace {workspace} would go below zero available; refused")


def _append(
    con: duckdb.DuckDBPyConnection,
    op: str,
    key: str,
    body: dict[str, Any],
    workspace: str,
    batch_id: str | None,
    amount: int,
    memo: str | None,
    postings: list[tuple[str, str, int]],
) -> Entry:
    assert sum(p[2] for p in postings) == 0, "unbalanced entry"
    entry_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    con.execute(
        "INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [entry_id, key, op, workspace, batch_id, amount, _body_hash(body), memo, now],
    )
    con.executemany("INSERT INTO postings VALUES (?, ?, ?, ?)", [[entry_id, a, w, v] for a, w, v in postings])
    return Entry(entry_id, key, op, workspace, batch_id, amount, memo, now)


def _hold(con: duckdb.DuckDBPyConnection, batch_id: str) -> Hold | None:
    rows = con.execute(
        "SELECT op, workspace, amount_usd_micros, created_at FROM journal WHERE batch_id = ? ORDER BY created_at",
        [batch_id],
    ).fetchall()
    reserve = next((r for r in rows if r[0] == "reserve"), None)
    if reserve is None:
        return None
    resolved = next((r for r in rows if r[0] in ("settle", "void", "expire")), None)
    status = {"settle": "settled", "void": "voided", "expire": "expired"}[resolved[0]] if resolved else "held"
    captured = int(resolved[2]) if resolved and resolved[0] == "settle" else 0
    return Hold(batch_id, reserve[1], int(reserve[2]), reserve[3], status, captured)


def _open_hold(con: duckdb.DuckDBPyConnection, batch_id: str) -> Hold:
    hold = _hold(con, batch_id)
    if hold is None:
        raise HoldError(f"batch {batch_id} has no reservation; reserve before settling or releasing")
    if hold.status != "held":
        raise HoldError(f"batch {batch_id}'s reservation is already {hold.status}")
    return hold
