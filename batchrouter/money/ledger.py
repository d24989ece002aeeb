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

Concurrency: one process owns the DuckDB file, the control service (`batchrouter.core.control`); every
public operation here is `@served`, so from any other process it runs there, as one transaction,
writes one at a time. Within the transaction, the workspace's row in `wallets` (the balances the
journal replays to, kept for speed) is updated: two transactions that both read a balance and
spend it conflict on that row (a process alone with its file, with many threads, relies on that),
and the loser retries against the new balance. So no interleaving of processes or threads can
take more than the balance.

Amounts are checked by `money.micros_problem` (whole micro-dollars, 0 to `money.MAX_USD_MICROS`);
the engine's keys (`reserve:<batch>`, `settle:`, `void:`, `expire:`) are a namespace an operator's
grant or purchase key cannot enter.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from batchrouter.core.amounts import micros_problem
from batchrouter.core.control import served
from batchrouter.core.db import Database
from batchrouter.core.errors import HoldError as HoldError
from batchrouter.core.errors import IdempotencyConflict as IdempotencyConflict
from batchrouter.core.errors import InsufficientCredits as InsufficientCredits
from batchrouter.core.errors import InvalidAmount as InvalidAmount
from batchrouter.core.errors import InvalidKey as InvalidKey
from batchrouter.core.errors import LedgerError as LedgerError
from batchrouter.core.errors import usd as usd

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
# The engine's own keys (`reserve:<batch>`, ...): a grant or purchase key can never take one, so an
# operator's `--key` cannot collide with a batch's reservation, settlement, void or expiry.
INTERNAL_KEY_PREFIXES = ("reserve:", "settle:", "void:", "expire:")
MAX_KEY_LENGTH = 200


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


class HoldStatus(StrEnum):
    """A reservation's state: held until it is settled (captured), voided or expired (released)."""

    HELD = "held"
    SETTLED = "settled"
    VOIDED = "voided"
    EXPIRED = "expired"


_RESOLVED_AS = {"settle": HoldStatus.SETTLED, "void": HoldStatus.VOIDED, "expire": HoldStatus.EXPIRED}


@dataclass(frozen=True)
class Hold:
    batch_id: str
    workspace: str
    amount_usd_micros: int
    created_at: datetime
    status: HoldStatus
    captured_usd_micros: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", HoldStatus(self.status))  # also when decoded from the control service


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
        return [h for h in self.holds(status=HoldStatus.HELD) if h.created_at < cutoff]

    # -- operations --------------------------------------------------------------------------
    @served()
    def grant(self, workspace: str, amount_usd_micros: int, *, key: str, memo: str | None = None) -> Entry:
        """Promotional credit."""
        _amount(amount_usd_micros, "a grant", allow_zero=False)
        return self._credit("grant", "platform:promotions", workspace, amount_usd_micros, key=key, memo=memo)

    @served()
    def purchase(self, workspace: str, amount_usd_micros: int, *, key: str, memo: str | None = None) -> Entry:
        """Credit bought through Stripe; `key` is the Checkout Session id."""
        _amount(amount_usd_micros, "a purchase", allow_zero=False)
        return self._credit("purchase", "platform:stripe_receivable", workspace, amount_usd_micros, key=key, memo=memo)

    def _credit(self, op: str, source: str, workspace: str, amount: int, *, key: str, memo: str | None) -> Entry:
        _operator_key(key)
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
        _amount(amount_usd_micros, f"the reservation of batch {batch_id}")
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
        _amount(actual_usd_micros, f"the actual cost of batch {batch_id}")
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
        """Replay the journal and prove the store whole; every problem found is listed, none stops the check.

        Checks: every entry has postings and every posting an entry; every entry balances; every
        entry's postings are the ones its operation writes (a hold's reservation, capture and release
        included), so a hold's state agrees with its postings; every resolution has a reservation and
        every hold is resolved at most once; wallets equal the replay of the postings, and credited =
        available + held + spent; no available balance ever went below zero.
        """
        with self._connect() as con:
            entries = con.execute(
                "SELECT entry_id, idempotency_key, op, workspace, batch_id, amount_usd_micros FROM journal "
                "ORDER BY created_at, entry_id"
            ).fetchall()
            postings = con.execute("SELECT entry_id, account, workspace, amount_usd_micros FROM postings").fetchall()
            wallets = con.execute(
                "SELECT workspace, available_usd_micros, held_usd_micros, spent_usd_micros, credited_usd_micros "
                "FROM wallets"
            ).fetchall()
            running = con.execute(
                "SELECT workspace, min(running) FROM (SELECT p.workspace, sum(p.amount_usd_micros) OVER ("
                "PARTITION BY p.workspace ORDER BY j.created_at, j.entry_id) AS running FROM postings p "
                "JOIN journal j USING (entry_id) WHERE p.account LIKE '%:available') GROUP BY ALL"
            ).fetchall()
        problems = _problems(entries, postings, wallets)
        problems += [f"workspace {w}: available went below zero ({m})" for w, m in running if m < 0]
        return {"ok": not problems, "entries": len(entries), "workspaces": len(wallets), "problems": problems}


def _problems(
    entries: list[tuple[Any, ...]], postings: list[tuple[Any, ...]], wallets: list[tuple[Any, ...]]
) -> list[str]:
    """What `verify` finds wrong in the journal, postings and wallets rows given."""
    problems: list[str] = []
    by_entry: dict[str, dict[str, int]] = {}
    replay: dict[tuple[str, str], int] = {}
    for entry_id, acct, workspace, amount in postings:
        sums = by_entry.setdefault(entry_id, {})
        sums[acct] = sums.get(acct, 0) + int(amount)
        if acct.startswith("workspace:"):
            owner, kind = acct.split(":")[1], acct.split(":")[2]
            if owner != workspace:
                problems.append(f"entry {entry_id}: posting to {acct} is marked workspace {workspace}")
            replay[(owner, kind)] = replay.get((owner, kind), 0) + int(amount)
    known = {e[0] for e in entries}
    orphans = sorted(set(by_entry) - known)
    problems += [f"postings of entry {e} have no journal entry" for e in orphans]
    credited: dict[str, int] = {}
    reserved: dict[str, tuple[str, int]] = {}
    resolutions: dict[str, int] = {}
    for entry_id, key, op, ws, batch_id, amount in entries:
        amount = int(amount)
        sums = {a: v for a, v in by_entry.get(entry_id, {}).items() if v != 0}
        if entry_id not in by_entry:
            problems.append(f"entry {entry_id} ({op} {key}) has no postings")
        total = sum(sums.values())
        if total != 0:
            problems.append(f"entry {entry_id} does not balance (sum {total})")
        expected: dict[str, int] | None = None
        if op in ("grant", "purchase"):
            credited[ws] = credited.get(ws, 0) + amount
            source = "platform:promotions" if op == "grant" else "platform:stripe_receivable"
            expected = {source: -amount, account(ws, "available"): amount}
        elif op == "reserve":
            if batch_id in reserved:
                problems.append(f"batch {batch_id}: reserved more than once")
            reserved[batch_id] = (ws, amount)
            expected = {account(ws, "available"): -amount, account(ws, "held"): amount}
        elif op in ("settle", "void", "expire"):
            resolutions[batch_id] = resolutions.get(batch_id, 0) + 1
            hold = reserved.get(batch_id)
            if hold is None:
                problems.append(f"batch {batch_id}: {op} entry {entry_id} resolves no earlier reservation")
            else:
                held = hold[1]
                captured = amount if op == "settle" else 0
                if op != "settle" and amount != held:
                    problems.append(f"batch {batch_id}: {op} of {amount} but the hold is {held}")
                if captured > held:
                    problems.append(f"batch {batch_id}: captured {captured} exceeds the hold {held}")
                expected = {account(ws, "held"): -held, account(ws, "available"): held - captured,
                            account(ws, "spent"): captured}  # fmt: skip
        else:
            problems.append(f"entry {entry_id}: unknown operation {op!r}")
        if expected is not None and entry_id in by_entry:
            expected = {a: v for a, v in expected.items() if v != 0}
            if sums != expected:
                problems.append(f"entry {entry_id} ({op} {key}): postings {sums} are not the {op}'s {expected}")
    problems += [f"batch {b}: hold resolved {n} times" for b, n in resolutions.items() if n > 1]
    seen = set()
    for w, available, held, spent, cred in wallets:
        seen.add(w)
        expected_wallet = (replay.get((w, "available"), 0), replay.get((w, "held"), 0),
                           replay.get((w, "spent"), 0), credited.get(w, 0))  # fmt: skip
        if (available, held, spent, cred) != expected_wallet:
            problems.append(f"workspace {w}: wallet {(available, held, spent, cred)} != replay {expected_wallet}")
        if cred != available + held + spent:
            problems.append(f"workspace {w}: credited {cred} != available + held + spent")
    for w in sorted({w for w, _ in replay} - seen):
        if any(replay.get((w, kind), 0) for kind in ("available", "held", "spent")):
            problems.append(f"workspace {w}: postings but no wallet row")
    return problems


def _amount(amount: object, what: str, *, allow_zero: bool = True) -> None:
    problem = micros_problem(amount, allow_zero=allow_zero)
    if problem:
        raise InvalidAmount(f"{what} {problem}")


def _operator_key(key: object) -> None:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidKey(f"an idempotency key is 1 to {MAX_KEY_LENGTH} printable characters, got {key!r}")
    if key.startswith(INTERNAL_KEY_PREFIXES):
        raise InvalidKey(
            f"idempotency key {key!r}: keys starting with {', '.join(INTERNAL_KEY_PREFIXES)} belong to batches; "
            "choose another key"
        )


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
    status = _RESOLVED_AS[resolved[0]] if resolved else HoldStatus.HELD
    captured = int(resolved[2]) if resolved and resolved[0] == "settle" else 0
    return Hold(batch_id, reserve[1], int(reserve[2]), reserve[3], status, captured)


def _open_hold(con: duckdb.DuckDBPyConnection, batch_id: str) -> Hold:
    hold = _hold(con, batch_id)
    if hold is None:
        raise HoldError(f"batch {batch_id} has no reservation; reserve before settling or releasing")
    if hold.status != HoldStatus.HELD:
        raise HoldError(f"batch {batch_id}'s reservation is already {hold.status}")
    return hold
